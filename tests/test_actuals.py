"""Reading intervals from Kinesis against moto: checkpoints keyed by interval, reruns that read
the same records, resharding, iterator expiry, and the aggregation SQL over what was read."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest

from forewarn import producer
from forewarn.actuals import KinesisReader, checkpoint_key, read_interval
from forewarn.aggregate import classify_within
from forewarn.events import event_line
from forewarn.query import run_duckdb

from helpers import fresh_settings


@pytest.fixture
def stream(clients):
    """A fresh stream and bucket; the reader's arguments before the interval's."""
    settings = fresh_settings(clients)
    kinesis = clients.client("kinesis")
    return settings, kinesis, (kinesis, clients.s3, settings.bucket, settings.stream_name, settings.state_prefix)


def put(kinesis, stream, tag, n, when):
    lines = [(event_line(f"{tag}-{i}", "orders", when.timestamp(), 1.0).encode() + b"\n", f"{tag}-{i}") for i in range(n)]
    producer.put_records(kinesis, stream, lines)


@pytest.mark.stack
def test_intervals_resume_from_their_checkpoints_and_reruns_read_the_same(clients, stream):
    settings, kinesis, args = stream
    start = datetime.now(tz=UTC).replace(second=0, microsecond=0) - timedelta(minutes=5)
    put(kinesis, settings.stream_name, "a", 30, start + timedelta(minutes=1))
    time.sleep(1.1)
    middle = datetime.now(tz=UTC)
    time.sleep(1.1)
    put(kinesis, settings.stream_name, "b", 20, start + timedelta(minutes=2))

    first, info = read_interval(*args, start, middle, horizon=middle)
    assert info["records"] == 30 and not info["resumed_from_checkpoint"]
    again, _ = read_interval(*args, start, middle, horizon=middle)
    assert again.to_pylist() == first.to_pylist()  # a rerun reads the same records
    later = datetime.now(tz=UTC) + timedelta(seconds=1)
    time.sleep(1.1)
    second, info = read_interval(*args, middle, later, horizon=later)
    assert info["resumed_from_checkpoint"] and info["records"] == 20
    assert {json.loads(line)["event_id"][0] for line in second.column("line").to_pylist() if line} == {"b"}
    saved = json.loads(clients.s3.get_object(Bucket=settings.bucket, Key=checkpoint_key(settings.state_prefix, later))["Body"].read())
    assert set(saved) == {s["ShardId"] for s in kinesis.list_shards(StreamName=settings.stream_name)["Shards"]}

    window = int(start.timestamp()), int((start + timedelta(minutes=5)).timestamp())
    params = classify_within({"lookback_hours": 2, "grain_seconds": 300, "out_start_epoch": window[0], "out_end_epoch": window[1]},
                             *window)
    both = run_duckdb("aggregate", params, _concat(first, second))
    assert sum(both.column("event_count").to_pylist()) == 50


def _concat(a, b):
    import pyarrow as pa

    return pa.concat_tables([a, b])


@pytest.mark.stack
def test_reshard_between_intervals_is_followed(stream):
    settings, kinesis, args = stream
    t0 = datetime.now(tz=UTC) - timedelta(minutes=1)
    put(kinesis, settings.stream_name, "p", 10, t0)
    time.sleep(1.1)
    t1 = datetime.now(tz=UTC)
    _, info = read_interval(*args, t0, t1, horizon=t1)
    assert info["records"] == 10
    shard = kinesis.list_shards(StreamName=settings.stream_name)["Shards"][0]
    kinesis.split_shard(StreamName=settings.stream_name, ShardToSplit=shard["ShardId"],
                        NewStartingHashKey=str(int(shard["HashKeyRange"]["EndingHashKey"]) // 2))
    put(kinesis, settings.stream_name, "c", 40, t1)
    time.sleep(1.1)
    t2 = datetime.now(tz=UTC)
    table, info = read_interval(*args, t1, t2, horizon=t2)
    ids = {json.loads(line)["event_id"] for line in table.column("line").to_pylist() if line}
    assert ids == {f"c-{i}" for i in range(40)} and info["shards"] == 3


class ExpiringKinesis:
    """moto's iterators never expire: this one expires the first iterator it hands out."""

    def __init__(self, real):
        self.real = real
        self.exceptions = real.exceptions
        self.expired = False

    def list_shards(self, **kw):
        return self.real.list_shards(**kw)

    def get_shard_iterator(self, **kw):
        return self.real.get_shard_iterator(**kw)

    def get_records(self, **kw):
        if not self.expired:
            self.expired = True
            raise self.real.exceptions.ExpiredIteratorException(
                {"Error": {"Code": "ExpiredIteratorException", "Message": "Iterator expired"}}, "GetRecords")
        return self.real.get_records(**kw)


@pytest.mark.stack
def test_an_expired_iterator_is_renewed(stream):
    settings, kinesis, _ = stream
    t0 = datetime.now(tz=UTC) - timedelta(minutes=1)
    put(kinesis, settings.stream_name, "e", 15, t0)
    time.sleep(1.1)
    reader = KinesisReader(ExpiringKinesis(kinesis), settings.stream_name)
    records, positions = reader.read({}, t0 - timedelta(hours=1), datetime.now(tz=UTC))
    assert len(records) == 15 and reader.renewed == 1 and positions


@pytest.mark.stack
def test_what_arrives_while_an_interval_waits_for_late_data_still_reaches_the_next(stream):
    """The run for [start, end) reads until end + delay; events of the next interval that arrive
    in that wait are read by it too (and left out by event time), so the next interval must read
    them again rather than resume after them."""
    settings, kinesis, args = stream
    start = datetime.now(tz=UTC) - timedelta(seconds=3)
    put(kinesis, settings.stream_name, "old", 10, start + timedelta(seconds=1))
    time.sleep(1.1)
    end = datetime.now(tz=UTC)
    time.sleep(1.1)
    put(kinesis, settings.stream_name, "new", 5, end + timedelta(seconds=1))  # next interval's, arriving during the wait
    time.sleep(1.1)
    horizon = datetime.now(tz=UTC)
    first, _ = read_interval(*args, start, end, horizon=horizon)
    assert sum(1 for line in first.column("line").to_pylist() if line) == 15  # both kinds, read while it waited
    later = datetime.now(tz=UTC) + timedelta(seconds=1)
    time.sleep(1.1)
    second, info = read_interval(*args, end, later, horizon=later)
    ids = {json.loads(line)["event_id"].split("-")[0] for line in second.column("line").to_pylist() if line}
    assert ids == {"new"} and info["records"] == 5


@pytest.mark.stack
def test_the_comparison_judges_an_interval_read_from_kinesis(clients):
    """FOREWARN_ACTUALS_SOURCE=kinesis end to end: eight days of history aggregated and trained
    for today, the current interval's events sent through PutRecords, and the comparison reading
    them from the stream, aggregating them with the same SQL and opening one incident for the
    series that dropped."""
    from forewarn.aggregate import make_engine, range_windows, run_window
    from forewarn.compare import compare_interval, read_evidence
    from forewarn.publish import SnsSink
    from forewarn.synth import Anomaly, Scenario, SeriesSpec, plan_landing
    from forewarn.train import day_floor, train_all

    settings = fresh_settings(clients, grain_seconds=900, training_days=8, compare_minutes=15, actuals_source="kinesis")
    today = day_floor(datetime.now(tz=UTC))
    series = [SeriesSpec("orders.count", rate=6.0, weekly_amplitude=0.0), SeriesSpec("payments.count", rate=6.0, weekly_amplitude=0.0)]
    history = Scenario(series, seed=4)
    producer.write_landing(clients.s3, settings.bucket, settings.raw_prefix,
                           plan_landing(history, (today - timedelta(days=8)).timestamp(), today.timestamp(), settings.lookback_hours))
    engine = make_engine(settings, clients)
    for window in range_windows(today - timedelta(days=8), today, settings.lookback_hours, 24 * 8):
        run_window(settings, engine, clients.s3, window)
    train_all(settings, clients.s3, today)

    # the interval from the clock after the setup: the reader takes what arrived by its end and a
    # minute, so an interval fixed before a slow setup could end before its events were sent (a
    # forecast trained for today covers 26 hours, past a midnight in between)
    now = datetime.now(tz=UTC)
    end = now.replace(minute=now.minute // 15 * 15, second=0, microsecond=0) + timedelta(minutes=15)
    start = end - timedelta(minutes=15)
    live = Scenario(series, anomalies=[Anomaly("drop", "payments.count", start.timestamp(), 900, 0.05)], seed=5)
    plan = plan_landing(live, start.timestamp(), end.timestamp(), settings.lookback_hours, send_at=now.timestamp())
    kinesis = clients.client("kinesis")
    producer.send_plan(kinesis, settings.stream_name, plan)
    sent = plan[plan["expected_reason"].isna()].groupby("series").size().to_dict()

    sns = clients.client("sns")
    sinks = [SnsSink(sns, sns.create_topic(Name=settings.sns_topic)["TopicArn"])]
    summary = compare_interval(settings, engine, clients.s3, clients.client("cloudwatch"), sinks, start, end, now, kinesis=kinesis)
    evidence = read_evidence(clients.s3, settings.bucket, summary["evidence"].split(f"{settings.bucket}/", 1)[1])
    counts = evidence[evidence["metric"] == "event_count"].set_index("series")
    assert counts.loc["orders.count", "actual"] == sent["orders.count"]  # every event sent, counted once
    assert counts.loc["payments.count", "actual"] == sent.get("payments.count", 0)
    assert counts.loc["payments.count", "anomalous"] == -1 and counts.loc["orders.count", "anomalous"] == 0
    assert summary["incidents_opened"] == 1
    assert clients.s3.get_object(Bucket=settings.bucket, Key=checkpoint_key(settings.state_prefix, end))  # where the next interval resumes
