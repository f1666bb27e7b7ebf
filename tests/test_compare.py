"""The comparison on the embedded stack: a drop in a live stretch opens exactly one incident,
reruns and retries open no second one, metrics reach CloudWatch within its limits."""

from __future__ import annotations

import gzip
import io
import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from forewarn.aggregate import make_engine
from forewarn.compare import compare_interval, read_evidence, warm_up
from forewarn.detect import DetectorConfig, Memory, score
from forewarn.episodes import Episode
from forewarn.layout import state_key
from forewarn.publish import MAX_DATUMS_PER_CALL, SnsSink, put_metrics
from forewarn.registry import list_records
from forewarn.state import State, decode_state, encode_state
from forewarn.synth import Anomaly, Scenario, SeriesSpec
from forewarn.train import train_all

from helpers import DictS3, fresh_settings, land_and_aggregate, list_keys

DAY0 = datetime(2026, 11, 1, tzinfo=UTC)


class FakeCloudWatch:
    def __init__(self):
        self.calls = []

    def put_metric_data(self, Namespace, MetricData):  # noqa: N803
        self.calls.append(MetricData)


def test_put_metrics_batches_and_skips_what_cloudwatch_refuses():
    now = datetime(2026, 11, 27, tzinfo=UTC)
    data = [{"MetricName": "Actual", "Dimensions": [], "Timestamp": now - timedelta(minutes=i), "Value": float(i)} for i in range(2500)]
    data += [{"MetricName": "Actual", "Dimensions": [], "Timestamp": now, "Value": float("nan")},
             {"MetricName": "Actual", "Dimensions": [], "Timestamp": now - timedelta(days=15), "Value": 1.0},
             {"MetricName": "Actual", "Dimensions": [], "Timestamp": now + timedelta(hours=3), "Value": 1.0}]
    cw = FakeCloudWatch()
    counts = put_metrics(cw, "forewarn", data, now)
    assert counts == {"sent": 2500, "calls": 3, "skipped_not_finite": 1, "skipped_too_old": 1, "skipped_future": 1, "clamped": 0}
    assert all(len(c) <= MAX_DATUMS_PER_CALL for c in cw.calls)
    big = [{"MetricName": "A" * 200, "Dimensions": [{"Name": "Series", "Value": "s" * 250}] * 30, "Timestamp": now, "Value": 1.0}] * 900
    cw = FakeCloudWatch()
    put_metrics(cw, "forewarn", big, now)
    assert len(cw.calls) > 1 and sum(len(c) for c in cw.calls) == 900
    assert all(len(json.dumps(c, default=str)) < 1_000_000 for c in cw.calls)


def test_prepared_metric_bodies_are_what_botocore_would_send():
    """put_metrics encodes each PutMetricData body itself; on the wire it must be the JSON
    botocore's own serializer writes for the same points (captured before sending)."""
    from forewarn.local.stack import local_clients

    now = datetime(2026, 11, 27, 12, 5, tzinfo=UTC)
    data = [{"MetricName": name, "Dimensions": [{"Name": "Series", "Value": f"svc{i}.orders"}, {"Name": "Metric", "Value": "count"}],
             "Timestamp": now - timedelta(minutes=5 * (i % 3)), "Value": v, "Unit": "None"}
            for i, v in enumerate([0.0, 1.5, -2.25, 1e100, 7.0, 3.0]) for name in ("Actual", "Forecast")]
    data.append({"MetricName": "Actual", "Timestamp": now.replace(microsecond=250_000), "Value": 2.0})
    cw = local_clients(1).client("cloudwatch")  # forewarn's own client settings; port 1 is never reached
    sent = []

    def capture(request, **_):
        body = request.body
        sent.append(json.loads(gzip.decompress(body) if request.headers.get("Content-Encoding") == b"gzip" else body))
        raise RuntimeError("captured")  # nothing leaves the machine

    cw.meta.events.register("before-send.cloudwatch.PutMetricData", capture)
    with pytest.raises(RuntimeError, match="captured"):
        put_metrics(cw, "forewarn", data, now, senders=1)
    with pytest.raises(RuntimeError, match="captured"):
        cw.put_metric_data(Namespace="forewarn", MetricData=data)  # botocore's own serializer
    assert len(sent) == 2
    assert [d for d in sent[0]["MetricData"] if d not in sent[1]["MetricData"]] == [], sent[1]["MetricData"][-1]
    assert sent[0] == sent[1]
    assert len(sent[0]["MetricData"]) == len(data)


@pytest.fixture(scope="module")
def trained(clients):
    """Eight days of history, a drop two hours after the training run's end, trained forecasts."""
    return drop_world(clients)


def sns_to_queue(clients, settings):
    """The SNS sink on the settings' topic, and an SQS queue subscribed to it (raw messages)."""
    sqs = clients.client("sqs")
    queue = sqs.create_queue(QueueName=f"q-{settings.bucket}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    topic = clients.client("sns").create_topic(Name=settings.sns_topic)["TopicArn"]
    clients.client("sns").subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn, Attributes={"RawMessageDelivery": "true"})
    return [SnsSink(clients.client("sns"), topic)], sqs, queue


def drained(sqs, queue) -> list[dict]:
    """Every message waiting on the queue (and deleted from it), as JSON."""
    out = []
    while got := sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", []):
        out += [json.loads(m["Body"]) for m in got]
        sqs.delete_message_batch(QueueUrl=queue, Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)])
    return out


def drop_world(clients, deepening: bool = False):
    """The drop (to 5% for an hour); ``deepening``: to 40% for half an hour first, then to 3%
    (its impact rises as it goes: the incident is updated)."""
    settings = fresh_settings(clients, grain_seconds=900, training_days=8, horizon_hours=26, compare_minutes=15)
    trained_until = DAY0 + timedelta(days=8)
    drop_at = trained_until + timedelta(hours=2)
    drops = ([Anomaly("drop", "orders.count", drop_at.timestamp(), 1800, 0.4),
              Anomaly("drop", "orders.count", drop_at.timestamp() + 1800, 3600, 0.03)] if deepening
             else [Anomaly("drop", "orders.count", drop_at.timestamp(), 3600, 0.05)])
    scenario = Scenario([SeriesSpec("orders.count", rate=6.0, weekly_amplitude=0.0), SeriesSpec("temp", kind="gauge", period_s=120,
                         value_mean=5, value_sd=0.1, weekly_amplitude=0.0)], anomalies=drops, seed=3)
    end = trained_until + timedelta(hours=4)
    land_and_aggregate(clients, settings, scenario, DAY0, end, 24 * 9)
    train_all(settings, clients.s3, trained_until)
    return settings, trained_until, drop_at, end


@pytest.mark.stack
def test_a_drop_opens_one_incident_and_reruns_open_none(clients, trained):
    settings, trained_until, drop_at, end = trained
    engine = make_engine(settings, clients)
    sinks, sqs, queue = sns_to_queue(clients, settings)
    cloudwatch = clients.client("cloudwatch")
    now = end + timedelta(minutes=30)

    summaries = []
    t = trained_until
    while t < end:
        summaries.append(compare_interval(settings, engine, clients.s3, cloudwatch, sinks, t, t + timedelta(minutes=15), now))
        t += timedelta(minutes=15)
    assert summaries[0]["state_warmed_from_backtests"] and not summaries[1]["state_warmed_from_backtests"]
    assert sum(s["incidents_opened"] for s in summaries) == 1
    opened_at = next(i for i, s in enumerate(summaries) if s["incidents_opened"])
    assert trained_until + timedelta(minutes=15 * opened_at) <= drop_at + timedelta(minutes=30)

    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    facts = [json.loads(m["Body"]) for m in messages]
    updates = sum(s["incidents_updated"] for s in summaries)  # a deviation joining the episode, or its impact rising
    assert [f["event"] for f in facts] == ["incident.opened"] + ["incident.updated"] * updates
    assert all(f["episode"] == facts[0]["episode"] for f in facts)
    assert facts[0]["series"] == "orders.count" and facts[0]["direction"] == "below" and facts[0]["actual"] < facts[0]["lower_95"]

    # rerun the interval that opened it, then a retry of it: no second incident
    start = trained_until + timedelta(minutes=15 * opened_at)
    again = compare_interval(settings, engine, clients.s3, cloudwatch, sinks, start, start + timedelta(minutes=15), now)
    assert again["episodes_opened"] == 1 and again["incidents_opened"] == 0
    assert "Messages" not in sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=0)
    assert len(list_records(clients.s3, settings.bucket)) == 1

    # the episode's span is recorded for training to keep out (its drop, 15-minute buckets)
    spans = [json.loads(clients.s3.get_object(Bucket=settings.bucket, Key=k)["Body"].read()) for k in list_keys(clients.s3, settings.bucket, "episodes/")]
    assert [(r["series"], r["episode"]) for r in spans] == [("orders.count", facts[0]["episode"])]
    assert "event_count" in spans[0]["metrics"] and pd.Timestamp(spans[0]["started"]) <= pd.Timestamp(drop_at) + pd.Timedelta("30min")
    assert pd.Timestamp(spans[0]["started"]) <= pd.Timestamp(spans[0]["last_anomalous"]) < pd.Timestamp(drop_at) + pd.Timedelta("75min")

    evidence = read_evidence(clients.s3, settings.bucket, summaries[opened_at]["evidence"].split("/", 3)[3])
    assert set(evidence["series"]) == {"orders.count", "temp"} and (evidence["anomalous"] == -1).any()
    assert clients.s3.get_object(Bucket=settings.bucket, Key=state_key(settings, end))
    names = {m["MetricName"] for m in cloudwatch.list_metrics(Namespace="forewarn")["Metrics"]}
    assert {"Actual", "Forecast", "AnomalyLikelihood"} <= names  # the default set: no other per-series metric
    assert not names & {"ForecastLower", "ForecastUpper", "DeviationScore", "Anomalous"}
    # no false alarm on the steady gauge
    assert not (evidence[evidence.series == "temp"]["anomalous"] != 0).any()


@pytest.mark.stack
@pytest.mark.airflow
def test_compare_dag_runs_and_a_retried_run_opens_no_second_incident(clients, trained, airflow_db, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    from conftest import ROOT

    settings, trained_until, drop_at, end = trained
    other = settings.replace(state_prefix="state-dag/")  # its own detector state, the same forecasts
    monkeypatch.setenv("FOREWARN_COMPARE_MINUTES", "15")
    monkeypatch.setenv("AIRFLOW_VAR_FOREWARN_CONFIG", json.dumps({
        "bucket": settings.bucket, "glue_database": settings.glue_database, "grain_seconds": 900, "compare_minutes": 15,
        "state_prefix": other.state_prefix, "sns_topic": settings.sns_topic, "compare_delay_minutes": 0,
        "cloudwatch_namespace": "forewarn-dag"}))
    dag = DagBag(dag_folder=str(ROOT / "dags" / "forewarn_compare.py")).dags["forewarn_compare"]
    before = len(list_records(clients.s3, settings.bucket))
    t = drop_at - timedelta(minutes=30)
    while t <= drop_at + timedelta(minutes=30):
        assert dag.test(logical_date=t + timedelta(minutes=15)).state == "success"
        t += timedelta(minutes=15)
    assert dag.test(logical_date=drop_at + timedelta(minutes=15)).state == "success"  # a rerun
    assert clients.s3.get_object(Bucket=settings.bucket, Key=state_key(other, drop_at + timedelta(minutes=45)))
    # the episode is the same one the direct runs opened: the registry still holds one incident
    assert len(list_records(clients.s3, settings.bucket)) == max(before, 1)
    dashboards = clients.client("cloudwatch").list_dashboards()["DashboardEntries"]
    assert "forewarn-dag" in {d["DashboardName"] for d in dashboards}


def test_the_compare_dag_refuses_an_interval_other_than_its_schedule(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    from forewarn.config import ConfigError

    from conftest import ROOT

    monkeypatch.setenv("FOREWARN_COMPARE_MINUTES", "15")
    monkeypatch.setenv("AIRFLOW_VAR_FOREWARN_CONFIG", json.dumps({"compare_minutes": 30}))
    dag = DagBag(dag_folder=str(ROOT / "dags" / "forewarn_compare.py")).dags["forewarn_compare"]
    start = datetime(2026, 10, 9, tzinfo=UTC)
    with pytest.raises(ConfigError, match="compare_minutes is 30 .* parsed with 15"):
        dag.get_task("compare").python_callable(params={"open_incidents_for_past": False}, data_interval_start=start,
                                                data_interval_end=start + timedelta(minutes=15), dag_run=None)


@pytest.mark.stack
def test_alarms_follow_the_set_of_series(clients):
    from forewarn.publish import sync_alarms

    cloudwatch = clients.client("cloudwatch")
    topic = clients.client("sns").create_topic(Name="alarm-target")["TopicArn"]
    first = sync_alarms(cloudwatch, "fw-alarms", [("a", "event_count"), ("b", "value_mean")], topic, 0.6225)
    assert first == {"created": 2, "deleted": 0, "kept": 0, "updated": 0}
    second = sync_alarms(cloudwatch, "fw-alarms", [("b", "value_mean"), ("c", "event_count")], topic, 0.6225)
    assert second == {"created": 1, "deleted": 1, "kept": 1, "updated": 0}
    alarms = cloudwatch.describe_alarms(AlarmNamePrefix="fw-alarms-")["MetricAlarms"]
    assert {a["AlarmName"] for a in alarms} == {"fw-alarms-b-value_mean", "fw-alarms-c-event_count"}
    assert all(a["AlarmActions"] == [topic] and a["Threshold"] == 0.6225 and a["MetricName"] == "AnomalyLikelihood" for a in alarms)
    # a roll-up series' alarm watches its metric as published: one more dimension per key
    child = "c/region=eu/channel=app"
    cloudwatch.put_metric_alarm(AlarmName=f"fw-alarms-{child}-event_count", Namespace="fw-alarms", MetricName="AnomalyLikelihood",
                                Dimensions=[{"Name": "Series", "Value": child}, {"Name": "Metric", "Value": "event_count"}],
                                Statistic="Maximum", Period=300, EvaluationPeriods=1, Threshold=0.6225,
                                ComparisonOperator="GreaterThanOrEqualToThreshold")  # as made before the series carried keys
    third = sync_alarms(cloudwatch, "fw-alarms", [("c", "event_count"), (child, "event_count")], topic, 0.6225)
    assert third == {"created": 0, "deleted": 1, "kept": 1, "updated": 1}
    made = cloudwatch.describe_alarms(AlarmNames=[f"fw-alarms-{child}-event_count"])["MetricAlarms"][0]
    assert {(d["Name"], d["Value"]) for d in made["Dimensions"]} == {
        ("Series", child), ("Metric", "event_count"), ("region", "eu"), ("channel", "app")}
    assert sync_alarms(cloudwatch, "fw-alarms", [("c", "event_count"), (child, "event_count")], topic, 0.6225) == {
        "created": 0, "deleted": 0, "kept": 2, "updated": 0}


def test_the_dashboard_is_a_fixed_set_of_ranked_and_searched_graphs_whatever_the_series():
    from forewarn.config import ConfigError, Settings
    from forewarn.publish import dashboard_body

    # no argument names the series: 10 or 10,000 make the same few widgets
    big = dashboard_body("fw", ["event_count", "value_mean"], Settings().cloudwatch_metric_list, "us-east-1", 0.6225, "s0")
    body = json.dumps(big)
    assert len(big["widgets"]) == 6 and len(body) < 10_000  # CloudWatch: 500 widgets, 1 MB a dashboard
    ranked = [w for w in big["widgets"] if "Most anomalous" in w["properties"].get("title", "")]
    assert len(ranked) == 2 and all("ORDER BY MAX() DESC LIMIT 10" in w["properties"]["metrics"][0][0]["expression"] for w in ranked)
    assert big["variables"][0]["pattern"] == "SERIES" and big["variables"][0]["defaultValue"] == "s0"
    lean = dashboard_body("fw", ["event_count"], ["AnomalyLikelihood"], "us-east-1", 0.6225)
    assert "variables" not in lean and len(lean["widgets"]) == 3  # no series graph without Actual or Forecast
    with pytest.raises(ConfigError, match="choose from"):
        Settings(cloudwatch_metrics="Actual,Bogus")
    with pytest.raises(ConfigError, match="AnomalyLikelihood"):
        Settings(cloudwatch_metrics="Actual", alarm_action_arn="arn:aws:sns:us-east-1:123456789012:t")


def _backtest(end: str, n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    buckets = pd.date_range(end=pd.Timestamp(end), periods=n, freq="5min")
    actual = 10 + rng.normal(0, 1, n) + 3.0  # the forecast ran 3 low lately
    return pd.DataFrame({"series": "s", "metric": "event_count", "bucket_start": buckets, "actual": actual,
                         "mean": 10.0, "lower_95": 8.0, "upper_95": 12.0})


def test_warm_up_keeps_recent_errors_only_when_the_backtests_reach_the_first_bucket():
    cfg = DetectorConfig(min_history=100)
    grain = pd.Timedelta(minutes=5)
    backtest = _backtest("2026-11-01T23:55Z")
    next_bucket = warm_up(backtest, cfg, pd.Timestamp("2026-11-02T00:00Z"), grain)
    hours_later = warm_up(backtest, cfg, pd.Timestamp("2026-11-02T06:00Z"), grain)
    assert len(next_bucket.recent_errors(0)) == cfg.correction_window and next_bucket.recent_errors(0).sum() > 20
    assert not len(hours_later.recent_errors(0)) and not hours_later.run(0)
    assert hours_later.deviations(0).tolist() == next_bucket.deviations(0).tolist()  # what it learned stays


def test_warm_up_knows_the_range_of_the_whole_training_history():
    """A value is novel when it lies beyond everything the series has shown: the backtests cover
    the history's last days only, so the warm-up takes the range (and size) of the whole history
    they carry; backtests without it (written before it was) or with nulls keep their own."""
    cfg = DetectorConfig(min_history=100)
    backtest = _backtest("2026-11-01T23:55Z")
    own = warm_up(backtest, cfg)
    wide = warm_up(backtest.assign(history_low=2.0, history_high=40.0, history_values=8064), cfg)
    assert (wide.low[0], wide.high[0], wide.seen[0]) == (2.0, 40.0, 8064)
    assert own.low[0] > 2.0 and own.high[0] < 40.0 and own.seen[0] == len(backtest)
    nulls = warm_up(backtest.assign(history_low=np.nan, history_high=np.nan, history_values=np.nan), cfg)
    assert (nulls.low[0], nulls.high[0], nulls.seen[0]) == (own.low[0], own.high[0], own.seen[0])
    no_size = warm_up(backtest.assign(history_low=2.0, history_high=40.0, history_values=np.nan), cfg)
    assert (no_size.low[0], no_size.high[0], no_size.seen[0]) == (own.low[0], own.high[0], own.seen[0])
    # the range only ever widens what the backtests showed, and the values seen only ever grow
    narrow = warm_up(backtest.assign(history_low=own.low[0] + 1, history_high=own.high[0] - 1, history_values=10), cfg)
    assert (narrow.low[0], narrow.high[0], narrow.seen[0]) == (own.low[0], own.high[0], own.seen[0])
    # a value beyond the backtests' range but within the history's is not novel: it scores lower
    lk_own, *_ = score(np.array([own.high[0] + 5.0]), np.array([13.0]), np.array([11.0]), np.array([15.0]), own, cfg)
    lk_wide, *_ = score(np.array([own.high[0] + 5.0]), np.array([13.0]), np.array([11.0]), np.array([15.0]), wide, cfg)
    assert lk_wide[0] < lk_own[0]


def test_the_warm_up_reads_the_newest_run_s_backtests_only():
    """Two runs' backtests (newest first, as ``load_forecasts`` lists them) with a series in
    both: its rows are the newest run's alone, not both runs' buckets twice; a series only the
    older run has keeps that run's."""
    from forewarn.aggregate import parquet_bytes
    from forewarn.compare import read_backtests

    def table(series: list[str], end: str, high: float) -> bytes:
        frames = [_backtest(end, 50).assign(series=s_, history_low=0.0, history_high=high, history_values=100) for s_ in series]
        return parquet_bytes(pa.Table.from_pandas(pd.concat(frames, ignore_index=True), preserve_index=False))

    class FakeS3:
        objects = {"new": table(["s"], "2026-11-02T23:55Z", 30.0), "old": table(["s", "t"], "2026-11-01T23:55Z", 20.0)}

        def get_object(self, Bucket, Key):  # noqa: N803 - boto3's names
            return {"Body": io.BytesIO(self.objects[Key])}

    got = read_backtests(FakeS3(), ["s3://b/new", "s3://b/old"])
    s_rows, t_rows = got[("s", "event_count")], got[("t", "event_count")]
    assert len(s_rows) == 50 and s_rows["bucket_start"].min() > pd.Timestamp("2026-11-02T00:00Z")
    assert (s_rows["history_high"] == 30.0).all() and "_object" not in s_rows
    assert len(t_rows) == 50 and (t_rows["history_high"] == 20.0).all()
    assert warm_up(s_rows, DetectorConfig(min_history=10)).high[0] == 30.0


def _v2_detector(arrivals: list[float], shortfall: list[list[float]]) -> dict:
    """One detector as version 2 states wrote it (JSON, three views)."""
    view = {"arrivals": arrivals, "surprises": [1.0, 2.5]}
    return {"forecast_view": view, "corrected_view": view, "sustained_view": view, "errors": [1.0, -2.0], "low": 0.0,
            "high": 10.0, "seen": len(arrivals), "scored": 3, "recent_z": [0.5], "shortfall": shortfall}


def test_detector_state_round_trips_and_reads_older_states():
    cfg = DetectorConfig(min_history=10)
    _, _, memory = score(np.r_[np.full(30, 10.0), [2.0, 0.0]], np.full(32, 10.0), np.full(32, 4.0), np.full(32, 17.0), None,
                         cfg, counts=True)
    assert memory.run(0) == [(10.0, 2.0), (10.0, 0.0)]
    ep = Episode(id="s|2026-11-27T05:00", started="2026-11-27T05:00:00+00:00", last_anomalous="2026-11-27T05:00:00+00:00",
                 metric="event_count")
    state = State(["s|event_count"], memory, {"s": ep}, {"moment": "2026-11-27T05:05:00+00:00", "blind": None})
    back = decode_state(encode_state(state), cfg)
    assert back.keys == state.keys and back.episodes == state.episodes and back.doc["moment"] == state.doc["moment"]
    for name, a in memory.arrays().items():
        assert np.array_equal(getattr(back.memory, name), a, equal_nan=a.dtype.kind == "f"), name
    # version 3 written before the forecast-quality columns existed: they read empty
    import pyarrow as pa

    table = pa.ipc.open_file(pa.py_buffer(encode_state(state))).read_all()
    table = table.drop_columns([c for c in table.column_names if c.startswith("q_")])
    sink = io.BytesIO()
    with pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    earlier = decode_state(sink.getvalue(), cfg)
    assert earlier.memory.fits(cfg) and np.isnan(earlier.memory.q_inside).all() and earlier.memory.q_pos.tolist() == [0]
    assert np.array_equal(earlier.memory.devs, memory.devs, equal_nan=True)
    # a state a newer build wrote, its episodes with a field this one does not know: read, the field dropped
    doc = json.loads(table.schema.metadata[b"forewarn"])
    doc["episodes"]["s"]["added_later"] = 1
    newer = table.replace_schema_metadata({b"forewarn": json.dumps(doc).encode()})
    sink = io.BytesIO()
    with pa.ipc.new_file(sink, newer.schema) as w:
        w.write_table(newer)
    assert decode_state(sink.getvalue(), cfg).episodes == state.episodes
    # version 2 (gzipped JSON; its third view is dropped) and version 1 (plain JSON, no shortfall kept)
    v2 = {"version": 2, "moment": "x", "detectors": {"s|event_count": _v2_detector([0.5, 3.0, 1.5], [[10.0, 2.0]])},
          "episodes": {"s": {**ep.__dict__, "reported": False}}}
    old = decode_state(gzip.compress(json.dumps(v2).encode()), cfg)
    assert old.memory.deviations(0).tolist() == [0.5, 1.5, 3.0] and old.memory.run(0) == [(10.0, 2.0)]
    assert old.memory.recent_errors(0).tolist() == [1.0, -2.0] and old.memory.seen.tolist() == [3]
    assert not old.episodes["s"].reported
    v1 = {"detectors": {"s|event_count": {k: v for k, v in _v2_detector([0.5], []).items() if k != "shortfall"}},
          "episodes": {"s": {k: v for k, v in ep.__dict__.items() if k != "reported"}}}
    oldest = decode_state(json.dumps(v1).encode(), cfg)
    assert not oldest.memory.run(0) and oldest.episodes["s"].reported  # version 1 episodes were opened by the run that wrote them


def _row(metric: str, likelihood: float, deviation: float, actual: float, mean: float = 30.0) -> dict:
    return {"metric": metric, "likelihood": likelihood, "deviation": deviation, "actual": actual, "mean": mean,
            "lower_95": mean - 10, "upper_95": mean + 10, "anomalous": 0 if likelihood < 0.6225 else (1 if deviation > 0 else -1)}


def test_a_deviation_that_joins_an_open_episode_updates_its_one_incident():
    from forewarn.config import Settings
    from forewarn.episodes import track_episode

    settings = Settings()
    episodes: dict = {}
    at = pd.date_range("2026-11-27T05:00Z", periods=5, freq="5min")
    # a drop in orders: first seen as a noisy mean of few orders, then as the count itself
    kind, opened = track_episode(episodes, "orders", at[0], [_row("value_mean", 0.64, 4.0, 80.0), _row("count", 0.3, -1.5, 18.0)], settings)
    assert kind == "open" and opened.metric == "value_mean" and opened.direction == "above" and opened.impact == 4
    assert track_episode(episodes, "orders", at[1], [_row("value_mean", 0.63, 3.0, 70.0), _row("count", 0.2, -1.0, 20.0)], settings) is None
    kind, update = track_episode(episodes, "orders", at[2], [_row("value_mean", 0.5, 2.0, 60.0), _row("count", 0.93, -9.0, 2.0)], settings)
    assert kind == "update" and update.episode == opened.episode and update.revision == 1
    assert update.changes == ["count below its forecast joined", "now led by count below", "impact 4 -> 1"]
    assert (update.metric, update.direction, update.actual, update.impact) == ("count", "below", 2.0, 1)
    assert [(d["metric"], d["direction"], d["since"][11:16]) for d in update.deviations] == [("value_mean", "above", "05:00"),
                                                                                            ("count", "below", "05:10")]
    assert "dropped below" in update.title and "since 2026-11-27 05:00" in update.title
    # the same deviations at a lower peak change nothing; calm buckets end the episode
    assert track_episode(episodes, "orders", at[3], [_row("count", 0.8, -6.0, 5.0)], settings) is None
    calm = [_row("value_mean", 0.1, 0.5, 31.0), _row("count", 0.1, -0.5, 28.0)]
    actions = [track_episode(episodes, "orders", at[4] + pd.Timedelta(minutes=5 * k), calm, settings) for k in range(settings.resolve_after)]
    kind, resolved = actions[-1]
    assert kind == "resolve" and resolved.revision == 1 and len(resolved.deviations) == 2 and not episodes


def test_a_ruled_out_run_lasts_to_its_calm_buckets_and_an_episode_that_takes_its_metric_up_ends_it():
    """A rise of count that a rule keeps quiet (the series is watched for drops) opens a ruled-out
    run, which the detector's damped buckets carry on; when count then drops and alerts, the
    episode takes the metric up: the run ends at its last bucket outside the band and the
    episode's span starts at the drop, so training keeps each bucket out once and loses none. A
    metric the episode does not hold keeps its own run to its own calm buckets; one the rules do
    not judge has none; an open run goes through the state."""
    from forewarn.config import Settings
    from forewarn.episodes import RuledOutRuns, ruled_out_record, span_record, track_episodes
    from forewarn.layout import episode_key
    from forewarn.publish import token_of
    from forewarn.train import episode_spans

    settings = Settings(bucket="b", grain_seconds=300, resolve_after=6)
    at = pd.date_range("2026-11-27T05:00Z", periods=10, freq="5min")
    calm = {"count": (0.1, 0.5), "value_mean": (0.1, 0.3), "p95": (0.1, 0.2)}
    story = {0: {"count": (0.7, 8.0), "p95": (0.9, 5.0)},  # flagged, kept quiet (rises; p95 not judged)
             1: {"count": (0.2, 6.0)}, 2: {"count": (0.2, 6.0), "value_mean": (0.65, 4.0)},  # damped; value_mean kept quiet
             3: {"count": (0.95, -9.0), "value_mean": (0.2, 4.0)}}  # count drops: an alert
    rows = []
    for k, bucket in enumerate(at):
        for metric, (likelihood, deviation) in {**calm, **story.get(k, {})}.items():
            row = _row(metric, likelihood, deviation, 30.0 + deviation)
            row["anomalous"] = -1 if (metric, k) == ("count", 3) else 0  # what the rules let alert
            rows.append({**row, "series": "orders", "bucket_start": bucket})
    ruled = RuledOutRuns({}, settings.alert_threshold, {("orders", "p95")})
    episodes: dict = {}
    closed: list = []
    track_episodes(episodes, [r for r in rows if r["bucket_start"] <= at[2]], settings, closed, ruled)
    assert sorted(ruled.runs) == ["orders|count", "orders|value_mean"] and not ruled.ended
    carried = decode_state(encode_state(State([], Memory.empty(0), episodes, {}, ruled.runs))).ruled_out
    assert carried == ruled.runs
    ruled.runs = carried
    actions = track_episodes(episodes, [r for r in rows if r["bucket_start"] > at[2]], settings, closed, ruled)
    assert [kind for kind, _ in actions] == ["open", "resolve"] and not ruled.runs
    ((count, taken_at), (value_mean, calm_at)) = ruled.ended
    assert (count.metric, count.started, count.last_deviating, taken_at) == ("count", at[0].isoformat(), at[2].isoformat(),
                                                                             at[3].isoformat())
    assert (value_mean.metric, value_mean.started, value_mean.last_deviating, calm_at) == ("value_mean", at[2].isoformat(),
                                                                                          at[3].isoformat(), at[9].isoformat())
    ((series, ep),) = closed
    records = [ruled_out_record(count, taken_at, "live"), ruled_out_record(value_mean, calm_at, "live"),
               span_record(series, ep, actions[-1][1].ended.isoformat(), "live")]
    objects = {episode_key(datetime.fromisoformat(r["started"]), token_of(r["episode"])): json.dumps(r).encode() for r in records}

    kept = episode_spans(settings, DictS3(objects), at[0].to_pydatetime(), (at[0] + pd.Timedelta(days=1)).to_pydatetime())
    times = {metric: [b for b in at for span in kept if metric in span["metrics"] and span["first"] <= b.isoformat() <= span["last"]]
             for metric in ("count", "value_mean", "p95")}
    assert times == {"count": list(at[:4]), "value_mean": list(at[2:4]), "p95": []}, times


def test_episodes_from_older_states_load_and_update():
    from forewarn.config import Settings
    from forewarn.episodes import track_episode

    old = {"detectors": {}, "episodes": {"orders": {
        "id": "orders|2026-11-27T05:00", "started": "2026-11-27T05:00:00+00:00", "last_anomalous": "2026-11-27T05:00:00+00:00",
        "metric": "value_mean", "calm": 0, "peak": 0.64, "direction": "above", "actual": 80.0, "expected": 30.0, "lower": 20.0,
        "upper": 40.0}}}
    episodes = decode_state(json.dumps(old).encode()).episodes
    kind, update = track_episode(episodes, "orders", pd.Timestamp("2026-11-27T05:05Z"), [_row("count", 0.9, -9.0, 2.0)], Settings())
    assert kind == "update" and update.changes[0] == "count below its forecast joined" and len(update.deviations) == 2
    again = decode_state(encode_state(State([], Memory.empty(0), episodes, {})))
    assert again.episodes["orders"].deviations == episodes["orders"].deviations


@pytest.mark.stack
def test_state_is_written_the_same_bytes_each_time_and_json_states_still_read(clients):
    from forewarn.state import read_state, write_state

    settings = fresh_settings(clients)
    cfg = DetectorConfig(min_history=10)
    _, _, memory = score(np.r_[np.full(40, 10.0), [0.0]], np.full(41, 10.0), np.full(41, 4.0), np.full(41, 17.0), None, cfg,
                         counts=True)
    state = State(["s|event_count"], memory, {}, {"moment": "m"})
    moment = datetime(2026, 11, 27, 5, 0, tzinfo=UTC)
    size = write_state(settings, clients.s3, moment, state)
    first = clients.s3.get_object(Bucket=settings.bucket, Key=state_key(settings, moment))["Body"].read()
    write_state(settings, clients.s3, moment, state)  # a rerun
    assert clients.s3.get_object(Bucket=settings.bucket, Key=state_key(settings, moment))["Body"].read() == first
    assert state_key(settings, moment).endswith(".arrow") and size == len(first)
    assert read_state(settings, clients.s3, moment, cfg=cfg).memory.seen.tolist() == [41]
    v2 = {"version": 2, "detectors": {"s|event_count": _v2_detector([0.5, 3.0], [])}, "episodes": {}}
    for earlier, suffix, body in ((datetime(2026, 11, 27, 4, 55, tzinfo=UTC), ".json.gz", gzip.compress(json.dumps(v2).encode())),
                                  (datetime(2026, 11, 27, 4, 50, tzinfo=UTC), ".json", json.dumps(v2).encode())):
        key = state_key(settings, earlier).removesuffix(".arrow") + suffix  # written by earlier versions
        clients.s3.put_object(Bucket=settings.bucket, Key=key, Body=body)
        assert read_state(settings, clients.s3, earlier, cfg=cfg).memory.deviations(0).tolist() == [0.5, 3.0]


@pytest.mark.stack
def test_shards_judge_each_series_once_on_their_own_forecasts_and_state_exactly_as_one_task(clients):
    """Series hashed into three shards: training writes each batch within one shard, each shard
    reads only its own batches and state, and together they reach the verdicts one task does."""
    from dataclasses import replace

    from forewarn.layout import shard_of, state_dir
    from forewarn.state import latest_moment

    settings = fresh_settings(clients, grain_seconds=900, training_days=8, horizon_hours=26, compare_minutes=15, compare_shards=3,
                              batch_size=2)
    trained_until = DAY0 + timedelta(days=8)
    names = [f"svc{i}.count" for i in range(7)]
    scenario = Scenario([SeriesSpec(n, rate=4.0 + i, weekly_amplitude=0.0) for i, n in enumerate(names)],
                        anomalies=[Anomaly("drop", "svc3.count", (trained_until + timedelta(hours=1)).timestamp(), 3600, 0.05)], seed=5)
    end = trained_until + timedelta(hours=2)
    land_and_aggregate(clients, settings, scenario, DAY0, end, 24 * 9)
    manifest = train_all(settings, clients.s3, trained_until)
    assert manifest["shard_count"] == 3 and sorted(i for b in manifest["shards"].values() for i in b) == list(range(len(manifest["batches"])))
    for shard, positions in manifest["shards"].items():
        for i in positions:
            batch = pd.read_parquet(io.BytesIO(clients.s3.get_object(Bucket=settings.bucket,
                                                                   Key=manifest["batches"][i].split("/", 3)[3])["Body"].read()))
            assert {shard_of(s, 3) for s in batch["series"]} == {int(shard)}

    engine, cloudwatch, now = make_engine(settings, clients), clients.client("cloudwatch"), end + timedelta(minutes=30)
    single = replace(settings, compare_shards=1)
    with pytest.raises(ValueError, match="say which shard"):
        compare_interval(settings, engine, clients.s3, cloudwatch, [], trained_until, trained_until + timedelta(minutes=15), now)
    one, sharded = [], []
    t = trained_until
    while t < end:
        step = (t, t + timedelta(minutes=15))
        one.append(compare_interval(single, engine, clients.s3, cloudwatch, [], *step, now, open_incidents=False))
        sharded.append([compare_interval(settings, engine, clients.s3, cloudwatch, [], *step, now, open_incidents=False, shard=k)
                        for k in range(3)])
        t += timedelta(minutes=15)

    def rows(uri: str) -> pd.DataFrame:
        return read_evidence(clients.s3, settings.bucket, uri.split("/", 3)[3])

    for whole, parts in zip(one, sharded, strict=True):
        together = pd.concat([rows(p["evidence"]) for p in parts], ignore_index=True)
        for k, p in enumerate(parts):
            assert {shard_of(s, 3) for s in rows(p["evidence"])["series"]} <= {k} and "shard=" in p["evidence"]
        key = ["series", "metric", "bucket_start"]
        a, b = rows(whole["evidence"]).sort_values(key).reset_index(drop=True), together.sort_values(key).reset_index(drop=True)
        pd.testing.assert_frame_equal(a, b)
        assert whole["episodes_opened"] == sum(p["episodes_opened"] for p in parts)
    assert sum(s["episodes_opened"] for s in one) >= 1
    for k in range(3):  # each shard's own state chain
        assert latest_moment(settings, clients.s3, end, "backfill", timedelta(hours=1), shard=k) == end
        assert state_dir(settings, "backfill", k).endswith(f"shard={k:03d}/")


@pytest.mark.stack
def test_hourly_forecast_objects_give_what_the_batches_give(clients, trained, monkeypatch):
    """A comparison reads its shard's hourly objects; a run without them (version 1 manifest, or
    trained for another shard count) is read from its batches, with the same result."""
    import forewarn.compare as compare

    settings, trained_until, _, _ = trained
    buckets = pd.date_range(trained_until + timedelta(minutes=45), periods=3, freq="15min")  # across an hour
    hourly, _, info = compare.load_forecasts(settings, clients.s3, buckets)
    monkeypatch.setattr(compare, "_hourly_objects", lambda *a, **k: None)
    batches, _, _ = compare.load_forecasts(settings, clients.s3, buckets)
    key = ["series", "metric", "bucket_start"]
    assert len(hourly) == len(batches) > 0 and info["runs"] == [trained_until.isoformat()]
    assert set(hourly["bucket_start"]) == set(buckets)
    pd.testing.assert_frame_equal(hourly.sort_values(key).reset_index(drop=True), batches.sort_values(key).reset_index(drop=True))


@pytest.mark.stack
def test_a_label_on_an_open_incident_resolves_it_and_the_episode_goes_on_silently(clients):
    """An operator labels the open drop "not_anomaly": the next run resolves the incident in
    every sink with the label's note, and the rest of the drop sends nothing (no update, no
    second incident, no resolution at its end)."""
    from forewarn.labels import parse_label, write_label

    settings, trained_until, drop_at, end = drop_world(clients)
    engine = make_engine(settings, clients)
    sinks, sqs, queue = sns_to_queue(clients, settings)
    cloudwatch = clients.client("cloudwatch")
    now = end + timedelta(minutes=30)

    t, summaries = trained_until, []
    while not any(s["incidents_opened"] for s in summaries):
        summaries.append(compare_interval(settings, engine, clients.s3, cloudwatch, sinks, t, t + timedelta(minutes=15), now))
        t += timedelta(minutes=15)
    opened = drained(sqs, queue)
    assert [m["event"] for m in opened] == ["incident.opened"]
    write_label(settings, clients.s3, parse_label({"target": opened[0]["episode"], "as": "not_anomaly", "by": "alice", "note": "load test"}))
    rest = []
    while t < end:
        rest.append(compare_interval(settings, engine, clients.s3, cloudwatch, sinks, t, t + timedelta(minutes=15), now))
        t += timedelta(minutes=15)
    assert rest[0]["labelled"] == {"resolved": 1, "silenced": 0, "held": 0}
    after = drained(sqs, queue)
    assert [m["event"] for m in after] == ["incident.resolved"]
    assert "labelled not_anomaly by alice: load test" in json.dumps(after[0])
    assert sum(s["incidents_opened"] + s["incidents_updated"] + s["incidents_resolved"] for s in rest) == 1
    record = list_records(clients.s3, settings.bucket)[0][2]
    assert record["status"] == "resolved" and record["note"] == "labelled not_anomaly by alice: load test"
    # once an hour, each series' share of labelled episodes that were real (here: none of one)
    hourly = [s_["label_precision"] for s_ in rest if s_["label_precision"]]
    assert hourly and all(p == {"orders.count": "0/1"} for p in hourly)
    published = cloudwatch.list_metrics(Namespace=settings.cloudwatch_namespace, MetricName="LabelPrecision",
                                        Dimensions=[{"Name": "Series", "Value": "orders.count"}])["Metrics"]
    assert len(published) == 1


@pytest.mark.stack
def test_an_episode_that_begins_in_a_maintenance_window_is_recorded_not_sent(clients):
    from forewarn.maintenance import parse_window, write_window

    settings, trained_until, drop_at, end = drop_world(clients)
    write_window(settings, clients.s3, parse_window({"series": "orders.*", "from": (drop_at - timedelta(minutes=15)).isoformat(),
                                                     "to": (drop_at + timedelta(hours=1)).isoformat(), "note": "load balancer swap"}))
    engine = make_engine(settings, clients)
    topic = clients.client("sns").create_topic(Name=settings.sns_topic)["TopicArn"]
    sinks = [SnsSink(clients.client("sns"), topic)]
    t, summaries = trained_until, []
    while t < end:
        summaries.append(compare_interval(settings, engine, clients.s3, clients.client("cloudwatch"), sinks, t,
                                          t + timedelta(minutes=15), end + timedelta(minutes=30)))
        t += timedelta(minutes=15)
    assert sum(s["episodes_opened"] for s in summaries) == 1  # recorded ...
    assert sum(s["incidents_opened"] + s["incidents_updated"] + s["incidents_resolved"] for s in summaries) == 0  # ... not sent
    assert sum(s["labelled"]["silenced"] for s in summaries) == 1
    assert list_records(clients.s3, settings.bucket) == []
    assert list_keys(clients.s3, settings.bucket, "episodes/")  # and its span kept out of the next training


@pytest.mark.stack
@pytest.mark.airflow
def test_per_series_settings_change_what_the_compare_dag_alerts_on(clients, airflow_db, monkeypatch):
    """The drop through real forewarn_compare runs, with a settings file that wants only rises
    of orders.*: the drop is judged (evidence) but no bucket is anomalous and no incident opens;
    the file changed, the next run alerts on it."""
    from airflow.dag_processing.dagbag import DagBag

    from conftest import ROOT

    settings, trained_until, drop_at, end = drop_world(clients)
    clients.s3.put_object(Bucket=settings.bucket, Key=settings.series_settings_key,
                          Body=b'series:\n  - match: "orders.*"\n    direction: above\n')
    monkeypatch.setenv("FOREWARN_COMPARE_MINUTES", "15")
    monkeypatch.setenv("AIRFLOW_VAR_FOREWARN_CONFIG", json.dumps({
        "bucket": settings.bucket, "glue_database": settings.glue_database, "grain_seconds": 900, "compare_minutes": 15,
        "sns_topic": settings.sns_topic, "compare_delay_minutes": 0}))
    clients.client("sns").create_topic(Name=settings.sns_topic)
    dag = DagBag(dag_folder=str(ROOT / "dags" / "forewarn_compare.py")).dags["forewarn_compare"]
    t = drop_at - timedelta(minutes=15)
    while t <= drop_at + timedelta(minutes=30):
        assert dag.test(logical_date=t + timedelta(minutes=15)).state == "success"
        t += timedelta(minutes=15)
    assert list_records(clients.s3, settings.bucket) == []
    assert list_keys(clients.s3, settings.bucket, "compare/")  # judged all the same
    clients.s3.put_object(Bucket=settings.bucket, Key=settings.series_settings_key, Body=b'series:\n  - match: "orders.*"\n    direction: both\n')
    assert dag.test(logical_date=t + timedelta(minutes=15)).state == "success"
    assert len(list_records(clients.s3, settings.bucket)) == 1


@pytest.mark.stack
def test_a_snoozed_series_sends_no_updates_until_the_snooze_ends(clients):
    from forewarn.maintenance import parse_window, write_window

    settings, trained_until, drop_at, end = drop_world(clients, deepening=True)
    engine = make_engine(settings, clients)
    sinks, sqs, queue = sns_to_queue(clients, settings)

    t, runs = trained_until, []
    while not any(s["incidents_opened"] for s in runs):
        runs.append(compare_interval(settings, engine, clients.s3, clients.client("cloudwatch"), sinks, t, t + timedelta(minutes=15), end))
        t += timedelta(minutes=15)
    assert [m["event"] for m in drained(sqs, queue)] == ["incident.opened"]
    write_window(settings, clients.s3, parse_window({"series": "orders.count", "from": t.isoformat(), "to": end.isoformat(), "note": "snoozed"}))
    snoozed = []
    while t < end:
        snoozed.append(compare_interval(settings, engine, clients.s3, clients.client("cloudwatch"), sinks, t, t + timedelta(minutes=15), end))
        t += timedelta(minutes=15)
    assert all(s["labelled"]["held"] == 1 for s in snoozed if s["episodes_updated"] or s["episodes_opened"])
    assert sum(s["episodes_updated"] for s in snoozed) >= 1, "the drop must change the episode for this test to say anything"
    assert "incident.updated" not in [m["event"] for m in drained(sqs, queue)] and sum(s["incidents_updated"] for s in snoozed) == 0


def _dag(name: str):
    from airflow.dag_processing.dagbag import DagBag

    from conftest import ROOT

    return DagBag(dag_folder=str(ROOT / "dags" / f"{name}.py")).dags[name]


def _compare_through_airflow(settings, monkeypatch):
    monkeypatch.setenv("FOREWARN_COMPARE_MINUTES", "15")
    monkeypatch.setenv("AIRFLOW_VAR_FOREWARN_CONFIG", json.dumps({
        "bucket": settings.bucket, "glue_database": settings.glue_database, "grain_seconds": 900, "compare_minutes": 15,
        "sns_topic": settings.sns_topic, "compare_delay_minutes": 0}))
    return _dag("forewarn_compare")


def _deepening_drop_until_its_incident(clients, monkeypatch):
    """The deepening drop through real forewarn_compare runs until its incident is sent: the
    settings, the DAG, the queue the topic delivers to, the next interval, the end of the data and
    what was sent (the one ``incident.opened``)."""
    settings, _, drop_at, end = drop_world(clients, deepening=True)
    compare = _compare_through_airflow(settings, monkeypatch)
    _, sqs, queue = sns_to_queue(clients, settings)
    t, sent = drop_at - timedelta(minutes=15), []
    while not sent:
        assert t < end, "the drop must open an incident for this test to say anything"
        assert compare.test(logical_date=t + timedelta(minutes=15)).state == "success"
        t += timedelta(minutes=15)
        sent = drained(sqs, queue)
    assert [m["event"] for m in sent] == ["incident.opened"]
    return settings, compare, sqs, queue, t, end, sent


@pytest.mark.stack
@pytest.mark.airflow
def test_a_window_from_the_maintenance_dag_holds_what_forewarn_compare_would_send(clients, airflow_db, monkeypatch):
    """A window declared through a real forewarn_maintenance run (as the UI's trigger form does),
    then the drop through real forewarn_compare runs: the episode is recorded and kept for
    training, nothing reaches the topic and no incident opens."""
    settings, _, drop_at, _ = drop_world(clients)
    compare = _compare_through_airflow(settings, monkeypatch)
    _, sqs, queue = sns_to_queue(clients, settings)
    conf = {"series": "orders.*", "from": (drop_at - timedelta(minutes=15)).isoformat(),
            "to": (drop_at + timedelta(hours=1)).isoformat(), "note": "load balancer swap"}
    assert _dag("forewarn_maintenance").test(run_conf=conf).state == "success"
    assert len(list_keys(clients.s3, settings.bucket, "maintenance/")) == 1
    t = drop_at - timedelta(minutes=15)
    while t <= drop_at + timedelta(minutes=30):
        assert compare.test(logical_date=t + timedelta(minutes=15)).state == "success"
        t += timedelta(minutes=15)
    assert list_keys(clients.s3, settings.bucket, "episodes/"), "the drop must be detected for this test to say anything"
    assert list_records(clients.s3, settings.bucket) == [] and drained(sqs, queue) == []


@pytest.mark.stack
@pytest.mark.airflow
def test_a_snooze_from_its_dag_holds_the_open_incidents_updates(clients, airflow_db, monkeypatch):
    """The deepening drop through real forewarn_compare runs opens an incident; a real
    forewarn_snooze run on its episode (as the UI's trigger form does) holds the updates the
    deepening would send (``test_a_snoozed_series_sends_no_updates_until_the_snooze_ends`` shows
    they are sent without it)."""
    settings, compare, sqs, queue, t, end, sent = _deepening_drop_until_its_incident(clients, monkeypatch)
    snooze = _dag("forewarn_snooze").test(logical_date=t, run_conf={"target": sent[0]["episode"], "minutes": 240, "note": "on it"})
    assert snooze.state == "success"
    windows = [json.loads(clients.s3.get_object(Bucket=settings.bucket, Key=k)["Body"].read())
               for k in list_keys(clients.s3, settings.bucket, "maintenance/")]
    assert [(w["series"], w["from"][:16]) for w in windows] == [("orders.count", t.isoformat()[:16])]
    assert windows[0]["note"].startswith("snoozed by ") and windows[0]["note"].endswith(": on it")
    while t < end:
        assert compare.test(logical_date=t + timedelta(minutes=15)).state == "success"
        t += timedelta(minutes=15)
    assert [m["event"] for m in drained(sqs, queue)] == []


@pytest.mark.stack
def test_a_forecast_that_degrades_raises_a_model_quality_alert_of_its_own_and_resolves_it(clients):
    """A gauge whose 15-minute means turn five times as noisy as the history it was trained on
    (a sensor going bad, a process the model no longer describes): within a day the rolling
    coverage of its 95% band falls under 85% and one model-quality alert opens, on the series'
    sinks, apart from its anomaly incidents; a rerun opens no second one; once the noise has
    stopped and the day's training run has taken it in, it resolves."""
    settings = fresh_settings(clients, grain_seconds=900, training_days=8, horizon_hours=26, compare_minutes=60,
                              metrics="value_mean")
    trained_until = DAY0 + timedelta(days=8)
    rng = np.random.default_rng(8)
    noisy = [Anomaly("spike", "temp", (trained_until + timedelta(minutes=15 * k)).timestamp(), 900, float(rng.normal(0, 2.0)))
             for k in range(4 * 30)]  # 30 hours of it
    scenario = Scenario([SeriesSpec("temp", kind="gauge", period_s=120, value_mean=5, value_sd=0.1, weekly_amplitude=0.0)],
                        anomalies=noisy, seed=5)
    end = trained_until + timedelta(days=3)
    land_and_aggregate(clients, settings, scenario, DAY0, end, 24 * 12)
    train_all(settings, clients.s3, trained_until)
    engine = make_engine(settings, clients)
    sinks, sqs, queue = sns_to_queue(clients, settings)
    cloudwatch = clients.client("cloudwatch")
    t, runs = trained_until, []
    while t < end:
        if t.hour == 0 and t > trained_until:
            train_all(settings, clients.s3, t)
        runs.append(compare_interval(settings, engine, clients.s3, cloudwatch, sinks, t, t + timedelta(hours=1), end))
        if t == trained_until + timedelta(hours=20):  # a rerun of an hour the alert is open in
            again = compare_interval(settings, engine, clients.s3, cloudwatch, sinks, t, t + timedelta(hours=1), end)
            assert again["model_quality"]["opened"] == 0
        t += timedelta(hours=1)
    sent = [m for m in drained(sqs, queue) if ":forecast_quality" in m["metric"]]
    assert [m["event"] for m in sent] == ["incident.opened", "incident.resolved"]
    opened_at = next(i for i, r in enumerate(runs) if r["model_quality"]["opened"])
    assert opened_at == 24, "as soon as a whole day of buckets is counted (the 24th hourly run's end)"
    assert "band held" in sent[0]["headline"] and sent[0]["series"] == "temp" and "|model-quality:value_mean|" in sent[0]["episode"]
    assert runs[opened_at]["model_quality"]["degraded_series"] == ["temp|value_mean"]
    assert runs[-1]["model_quality"]["degraded"] == 0 and runs[-1]["model_quality"]["measured"] == 1


@pytest.mark.stack
def test_an_acknowledged_incident_tells_its_sinks_once_and_sends_no_updates(clients):
    """The deepening drop opens an incident; ``forewarn ack`` on it: the next run publishes
    ``incident.acknowledged`` once (a rerun does not repeat it) and, as the drop deepens, no
    update (``test_a_snoozed_series...`` shows the update is sent otherwise)."""
    import os
    import subprocess
    import sys

    settings, trained_until, drop_at, end = drop_world(clients, deepening=True)
    engine = make_engine(settings, clients)
    sinks, sqs, queue = sns_to_queue(clients, settings)
    cloudwatch = clients.client("cloudwatch")
    t, runs = trained_until, []
    while not any(s["incidents_opened"] for s in runs):
        runs.append(compare_interval(settings, engine, clients.s3, cloudwatch, sinks, t, t + timedelta(minutes=15), end))
        t += timedelta(minutes=15)
    [opened] = drained(sqs, queue)
    env = {**os.environ, "FOREWARN_BUCKET": settings.bucket}
    out = subprocess.run([sys.executable, "-m", "forewarn.cli", "ack", opened["episode"], "--note", "on it", "--by", "alice"],
                         env=env, capture_output=True, text=True, check=True).stdout
    assert "acknowledged by alice: on it" in out
    first = compare_interval(settings, engine, clients.s3, cloudwatch, sinks, t, t + timedelta(minutes=15), end)
    again = compare_interval(settings, engine, clients.s3, cloudwatch, sinks, t, t + timedelta(minutes=15), end)  # a rerun
    assert (first["acknowledged"], again["acknowledged"]) == (1, 0)
    t += timedelta(minutes=15)
    rest = []
    while t < end:
        rest.append(compare_interval(settings, engine, clients.s3, cloudwatch, sinks, t, t + timedelta(minutes=15), end))
        t += timedelta(minutes=15)
    assert sum(s["episodes_updated"] for s in [first, *rest]) >= 1, "the drop must change the episode for this test to say anything"
    sent = drained(sqs, queue)
    assert [m["event"] for m in sent] == ["incident.acknowledged"]
    assert sent[0]["acknowledgement"] == "acknowledged by alice: on it" and sent[0]["episode"] == opened["episode"]


@pytest.mark.stack
@pytest.mark.airflow
def test_a_label_from_its_dag_resolves_the_incident_forewarn_compare_opened(clients, airflow_db, monkeypatch):
    """The drop through real forewarn_compare runs opens an incident; a real forewarn_label run
    (as the UI's trigger form does) labels its episode not_anomaly; the next forewarn_compare
    run resolves it in the sink with the label's note and sends nothing more."""
    settings, compare, sqs, queue, t, end, sent = _deepening_drop_until_its_incident(clients, monkeypatch)
    conf = {"target": sent[0]["episode"], "as": "not_anomaly", "note": "load test"}
    assert _dag("forewarn_label").test(run_conf=conf).state == "success"
    while t < end:
        assert compare.test(logical_date=t + timedelta(minutes=15)).state == "success"
        t += timedelta(minutes=15)
    after = drained(sqs, queue)
    assert [m["event"] for m in after] == ["incident.resolved"]
    assert after[0]["episode"] == sent[0]["episode"] and "labelled not_anomaly" in after[0]["resolution"] and "load test" in after[0]["resolution"]


@pytest.mark.stack
@pytest.mark.parametrize("shards", [1, 2])
def test_a_regional_drop_opens_an_incident_on_the_total_that_names_the_region(clients, shards):
    """Orders from two regions (events carry ``dimensions: {region}``), rolled up by region; eu's
    orders fall to 5% for an hour. The incident on the total names region=eu as the child that
    makes up the shortfall (share at least 80%), in its title and in the facts the sinks get;
    the same with the comparison in two shards (a roll-up is in its series' shard)."""
    from forewarn import producer
    from forewarn.aggregate import range_windows, run_window
    from forewarn.synth import plan_landing

    settings = fresh_settings(clients, grain_seconds=900, training_days=8, horizon_hours=26, compare_minutes=15, rollups="region",
                              compare_shards=shards)
    trained_until = DAY0 + timedelta(days=8)
    drop_at = trained_until + timedelta(hours=2)
    scenario = Scenario([SeriesSpec("orders.eu", rate=4.0, weekly_amplitude=0.0), SeriesSpec("orders.us", rate=2.0, weekly_amplitude=0.0)],
                        anomalies=[Anomaly("drop", "orders.eu", drop_at.timestamp(), 3600, 0.05)], seed=5)
    end = trained_until + timedelta(hours=4)
    plan = plan_landing(scenario, DAY0.timestamp(), end.timestamp(), settings.lookback_hours)

    def regional(line: str) -> str:  # one series, the region a dimension
        doc = json.loads(line)
        region = doc["series"].split(".")[1]
        return json.dumps({**doc, "series": "orders.count", "event_id": f"{region}-{doc['event_id']}", "dimensions": {"region": region}})

    plan = plan.assign(line=[regional(line) for line in plan["line"]])
    producer.write_landing(clients.s3, settings.bucket, settings.raw_prefix, plan)
    engine = make_engine(settings, clients)
    for w in range_windows(DAY0, end, settings.lookback_hours, 24 * 9):
        run_window(settings, engine, clients.s3, w)
    train_all(settings, clients.s3, trained_until)

    sinks, sqs, queue = sns_to_queue(clients, settings)
    t, now, judged = trained_until, end + timedelta(minutes=30), set()
    while t < end:
        for k in range(shards):
            summary = compare_interval(settings, engine, clients.s3, clients.client("cloudwatch"), sinks, t, t + timedelta(minutes=15),
                                       now, shard=k if shards > 1 else None)
            judged |= {series for series, _ in summary["keys"]}
        t += timedelta(minutes=15)
    assert judged == {"orders.count", "orders.count/region=eu", "orders.count/region=us"}  # the roll-ups are series
    messages = drained(sqs, queue)
    opened = [f for f in messages if f["event"] == "incident.opened"]
    total = [f for f in opened if f["series"] == "orders.count" and f["metric"] == "event_count"]
    assert len(total) == 1 and len(opened) == 1, [(f["series"], f["metric"]) for f in opened]  # one incident per cause
    told = [f.get("related") for f in messages if f["series"] == "orders.count"]
    assert ["orders.count/region=eu"] in told  # the child that fell joined it, as related
    where = total[0]["contributors"]
    assert where[0]["series"] == "orders.count/region=eu" and where[0]["dimensions"] == {"region": "eu"}
    assert where[0]["share"] >= 0.8 and len(where) == 1
    facts = [r["facts"] for _, _, r in list_records(clients.s3, settings.bucket)]
    assert [f["contributors"][0]["dimensions"] for f in facts if (f["series"], f["metric"]) == ("orders.count", "event_count")] == [
        {"region": "eu"}]  # in the registry too, so the page says it


@pytest.mark.stack
def test_every_series_of_one_producer_going_silent_is_one_incident_that_resolves_when_they_recover(clients):
    """Three series from one producer (``source: shop-eu`` in the per-series settings) fall
    silent for an hour at once: one incident, on the first by name, with the other two related;
    it is updated when they are back, and resolves; the fourth series, from another producer,
    is left alone."""
    settings = fresh_settings(clients, grain_seconds=900, training_days=8, horizon_hours=26, compare_minutes=15)
    trained_until = DAY0 + timedelta(days=8)
    silent_at = trained_until + timedelta(hours=2)
    names = ["shop-eu.orders", "shop-eu.carts", "shop-eu.views"]
    scenario = Scenario([SeriesSpec(n, rate=r, weekly_amplitude=0.0) for n, r in zip(names, (6.0, 4.0, 10.0), strict=True)]
                        + [SeriesSpec("shop-us.orders", rate=6.0, weekly_amplitude=0.0)],
                        anomalies=[Anomaly("missing", n, silent_at.timestamp(), 3600) for n in names], seed=3)
    end = trained_until + timedelta(hours=5)
    land_and_aggregate(clients, settings, scenario, DAY0, end, 24 * 9)
    train_all(settings, clients.s3, trained_until)
    clients.s3.put_object(Bucket=settings.bucket, Key=settings.series_settings_key,
                          Body=b"series:\n  - match: 'shop-eu.*'\n    source: shop-eu\n")
    engine = make_engine(settings, clients)
    sinks, sqs, queue = sns_to_queue(clients, settings)
    t, now = trained_until, end + timedelta(minutes=30)
    while t < end:
        compare_interval(settings, engine, clients.s3, clients.client("cloudwatch"), sinks, t, t + timedelta(minutes=15), now)
        t += timedelta(minutes=15)
    messages = drained(sqs, queue)
    opened = [m for m in messages if m["event"] == "incident.opened"]
    assert [(m["series"], m.get("related")) for m in opened] == [("shop-eu.carts", ["shop-eu.orders", "shop-eu.views"])]
    assert [m["series"] for m in messages if m["event"] == "incident.resolved"] == ["shop-eu.carts"]
    assert {m["series"] for m in messages} == {"shop-eu.carts"}
    # the one incident says when its members are back, before it resolves
    assert [(m["event"], m.get("changes")) for m in messages] == [
        ("incident.opened", None), ("incident.updated", ["shop-eu.orders, shop-eu.views recovered"]), ("incident.resolved", None)]


def test_a_ruled_out_run_ends_after_a_day_so_a_lasting_shift_is_learnt():
    """Nobody is told of a ruled-out run, so nobody labels a lasting shift the new normal: a
    series watched for drops whose traffic doubles for good stays outside its old band, and kept
    out of training for as long as that lasts, its old level would be forecast on and its next
    halving (still above the old band) hidden for weeks. A run ends a day after it started; from
    then on the new level is learnt."""
    from forewarn.config import Settings
    from forewarn.episodes import RuledOutRuns, track_episodes

    settings = Settings(bucket="b", grain_seconds=300, resolve_after=6)
    at = pd.date_range("2026-11-27T05:00Z", periods=2 * 288, freq="5min")
    rows = []
    for k, bucket in enumerate(at):
        row = _row("count", 0.7 if k == 0 else 0.3, 4.0, 60.0)  # flagged once, then damped, still outside the band
        rows.append({**row, "anomalous": 0, "series": "orders", "bucket_start": bucket})
    ruled = RuledOutRuns({}, settings.alert_threshold)
    track_episodes({}, rows, settings, [], ruled)
    ((run, ended_at),) = ruled.ended
    assert (run.started, ended_at) == (at[0].isoformat(), at[288].isoformat())
    assert run.last_deviating == at[287].isoformat() and not ruled.runs


def test_a_value_metric_of_fewer_events_than_expected_is_judged_against_a_band_as_much_wider(monkeypatch):
    """A mean of n events varies as 1/sqrt(n): where a bucket holds fewer events than the count
    forecast expected, the band of its mean, standard deviation and 95th percentile widens by
    sqrt(expected / events), the events counted as at least the count band's lower bound (a count
    below its band is an anomaly of its own: the band widens no more than there), and the
    deviation is measured against that band; counts, sums and buckets with as many events as
    expected or more keep theirs. The forecast's quality is judged on its own band."""
    from forewarn import quality
    from forewarn.compare import _judge_all

    buckets = pd.date_range("2026-11-16 10:00", periods=4, freq="5min", tz="UTC")
    level = ("value_mean", "value_stddev", "value_p95")
    rows = []
    for series, expected in (("a", 18.0), ("b/region=eu", 8.0)):
        for b in buckets:
            rows.append({"series": series, "metric": "event_count", "bucket_start": b, "mean": expected,
                         "lower_95": expected / 4, "upper_95": 2 * expected})
            rows += [{"series": series, "metric": m, "bucket_start": b, "mean": 50.0, "lower_95": 40.0, "upper_95": 60.0}
                     for m in (*level, "value_sum")]
    forecasts = pd.DataFrame(rows)
    # a: 18 expected (band from 4.5), seen 18, 2 (below its band: widened as at 4.5), 8, 40; b: 8 expected (from 2),
    # seen 2 in every bucket
    actuals = pd.concat([pd.DataFrame({"series": "a", "bucket_start": buckets, "event_count": [18.0, 2.0, 8.0, 40.0]}),
                         pd.DataFrame({"series": "b/region=eu", "bucket_start": buckets, "event_count": [2.0] * 4})])
    for m in (*level, "value_sum"):
        actuals[m] = 75.0
    cfg = DetectorConfig(min_history=1)
    keys = [(s_, m) for s_ in ("b/region=eu", "a") for m in (*level, "value_sum", "event_count")]  # the count after the others
    seen: list = []
    real_update = quality.update

    def spy(memory, rows_, actual, lower, upper, z, anomalous):
        seen.append((lower.copy(), upper.copy(), z.copy()))
        return real_update(memory, rows_, actual, lower, upper, z, anomalous)

    monkeypatch.setattr(quality, "update", spy)
    evidence = _judge_all(keys, buckets, forecasts, actuals, Memory.empty(len(keys), cfg), list(range(len(keys))), cfg,
                          buckets[0], keep_quality=True)
    z0 = 25 / (10 / 1.959964)
    for m in level:
        a = evidence[(evidence["series"] == "a") & (evidence["metric"] == m)].sort_values("bucket_start")
        assert a["upper_95"].tolist() == pytest.approx([60.0, 50.0 + 10.0 * 2, 50.0 + 10.0 * 1.5, 60.0]), m
        assert a["lower_95"].tolist() == pytest.approx([40.0, 50.0 - 10.0 * 2, 50.0 - 10.0 * 1.5, 40.0]), m
        assert a["deviation"].tolist() == pytest.approx([z0, z0 / 2, z0 / 1.5, z0], rel=1e-3), m
        b = evidence[(evidence["series"] == "b/region=eu") & (evidence["metric"] == m)]
        assert b["upper_95"].tolist() == pytest.approx([50.0 + 10.0 * 2] * 4), m
    merged = evidence.merge(forecasts, on=["series", "metric", "bucket_start"], suffixes=("", "_forecast"))
    kept = merged[merged["metric"].isin(["value_sum", "event_count"])]
    assert len(kept) == 16 and (kept["upper_95"] == kept["upper_95_forecast"]).all() and (kept["lower_95"] == kept["lower_95_forecast"]).all()
    lower, upper, z = seen[0]
    assert np.all(upper[[keys.index(("a", m)) for m in level]] == 60.0) and np.all(upper[[keys.index(("b/region=eu", m)) for m in level]] == 60.0)
    assert z[keys.index(("b/region=eu", "value_mean"))] == pytest.approx([z0] * 4, rel=1e-3)
    # a value metric judged without its series' count (not among the metrics) keeps its band
    alone = _judge_all([("a", "value_mean")], buckets, forecasts, actuals, Memory.empty(1, cfg), [0], cfg, buckets[0])
    assert alone["upper_95"].tolist() == [60.0] * 4


def test_a_busy_series_whose_count_collapsed_keeps_its_value_band_nearly_as_it_was():
    """Few events widen a value band only as far as the count band's lower bound allows: a busy
    series expecting 1,000 orders (band from 940) that saw 250 widens by sqrt(1000 / 940), so an
    average that rose by half is still judged against nearly the forecast's own band, while a
    quiet one expecting 6 (band from 1.5) that saw 1 widens by 2."""
    from forewarn.compare import METRIC_MEANINGS, few_events_widening

    keys = [("busy", "event_count"), ("busy", "value_mean"), ("quiet", "event_count"), ("quiet", "value_mean")]
    mean = np.array([[1000.0], [50.0], [6.0], [50.0]])
    lower = np.array([[940.0], [45.0], [1.5], [45.0]])
    actual = np.array([[250.0], [77.0], [1.0], [77.0]])
    factor = few_events_widening(keys, mean, lower, actual, [METRIC_MEANINGS.get(m) for _, m in keys])
    assert factor[:, 0] == pytest.approx([1.0, (1000 / 940) ** 0.5, 1.0, 2.0])
