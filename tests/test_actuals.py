"""Reading intervals from Kinesis against moto: checkpoints keyed by interval, reruns that read
the same records, resharding, iterator expiry, and the aggregation SQL over what was read."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest

from forewarn import producer
from forewarn.actuals import KinesisReader, checkpoint_key, read_interval
from forewarn.events import event_line
from forewarn.query import run_duckdb

from helpers import fresh_settings


def put(kinesis, stream, tag, n, when):
    lines = [(event_line(f"{tag}-{i}", "orders", when.timestamp(), 1.0).encode() + b"\n", f"{tag}-{i}") for i in range(n)]
    producer.put_records(kinesis, stream, lines)


@pytest.mark.stack
def test_intervals_resume_from_their_checkpoints_and_reruns_read_the_same(clients):
    settings = fresh_settings(clients)
    kinesis = clients.client("kinesis")
    start = datetime.now(tz=UTC).replace(second=0, microsecond=0) - timedelta(minutes=5)
    put(kinesis, settings.stream_name, "a", 30, start + timedelta(minutes=1))
    time.sleep(1.1)
    middle = datetime.now(tz=UTC)
    time.sleep(1.1)
    put(kinesis, settings.stream_name, "b", 20, start + timedelta(minutes=2))

    args = (kinesis, clients.s3, settings.bucket, settings.stream_name, settings.state_prefix)
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

    params = {"lookback_hours": 2, "grain_seconds": 300, "out_start_epoch": int(start.timestamp()),
              "out_end_epoch": int((start + timedelta(minutes=5)).timestamp())}
    both = run_duckdb("aggregate", params, _concat(first, second))
    assert sum(both.column("event_count").to_pylist()) == 50


def _concat(a, b):
    import pyarrow as pa

    return pa.concat_tables([a, b])


@pytest.mark.stack
def test_reshard_between_intervals_is_followed(clients):
    settings = fresh_settings(clients)
    kinesis = clients.client("kinesis")
    t0 = datetime.now(tz=UTC) - timedelta(minutes=1)
    put(kinesis, settings.stream_name, "p", 10, t0)
    time.sleep(1.1)
    t1 = datetime.now(tz=UTC)
    args = (kinesis, clients.s3, settings.bucket, settings.stream_name, settings.state_prefix)
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
def test_an_expired_iterator_is_renewed(clients):
    settings = fresh_settings(clients)
    kinesis = clients.client("kinesis")
    t0 = datetime.now(tz=UTC) - timedelta(minutes=1)
    put(kinesis, settings.stream_name, "e", 15, t0)
    time.sleep(1.1)
    reader = KinesisReader(ExpiringKinesis(kinesis), settings.stream_name)
    records, positions = reader.read({}, t0 - timedelta(hours=1), datetime.now(tz=UTC))
    assert len(records) == 15 and reader.renewed == 1 and positions
