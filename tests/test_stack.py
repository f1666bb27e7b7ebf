"""The embedded stack: lifecycle, idempotent bootstrap, Kinesis -> Firehose -> S3, resharding."""

from __future__ import annotations

import socket
import time

import pytest

from forewarn import producer
from forewarn.local import stack

from conftest import free_port
from helpers import fresh_settings, list_keys


@pytest.mark.stack
def test_up_is_reentrant_and_down_leaves_no_process(tmp_path):
    port = free_port()
    state = stack.up(port=port, home=tmp_path)
    try:
        assert stack.up(port=port, home=tmp_path)["pid"] == state["pid"]
        with pytest.raises(stack.StackError, match="already running"):
            stack.up(port=free_port(), home=tmp_path)
        s3 = stack.local_clients(port).s3
        assert "forewarn-data" in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    finally:
        assert stack.down(tmp_path)
    assert not stack._is_our_process(state["pid"])
    assert stack.read_state(tmp_path) is None
    assert stack.down(tmp_path) is False


def test_a_taken_port_gives_a_clear_error(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(stack.StackError, match=f"port {port} on 127.0.0.1 is in use"):
            stack.up(port=port, home=tmp_path)


@pytest.mark.stack
def test_bootstrap_is_idempotent(clients):
    settings = fresh_settings(clients)
    first = stack.bootstrap(clients, settings, shards=1)
    assert stack.bootstrap(clients, settings, shards=1) == first
    tables = clients.client("glue").get_tables(DatabaseName=settings.glue_database)["TableList"]
    assert {t["Name"] for t in tables} == {"raw_events", "aggregates"}


def wait_for_lines(s3, bucket, prefix, n, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [
            line
            for key in list_keys(s3, bucket, prefix)
            for line in s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode().splitlines()
        ]
        if len(lines) >= n:
            return lines
        time.sleep(0.2)
    return lines


@pytest.mark.stack
def test_records_flow_from_kinesis_through_firehose_into_the_landing_layout(clients):
    settings = fresh_settings(clients)
    forwarder = stack.Forwarder(clients, settings, poll=0.05)
    forwarder.start()
    try:
        records = [(f'{{"n":{i}}}\n'.encode(), str(i)) for i in range(700)]
        producer.put_records(clients.client("kinesis"), settings.stream_name, records)
        lines = wait_for_lines(clients.s3, settings.bucket, settings.raw_prefix, 700)
    finally:
        forwarder.stopping.set()
        forwarder.join(5)
    assert sorted(lines) == sorted(d.decode().strip() for d, _ in records)
    key = list_keys(clients.s3, settings.bucket, settings.raw_prefix)[0]
    parts = key.split("/")
    assert parts[0] == "raw" and len(parts[1]) == 4 and parts[5].startswith(settings.delivery_stream)


@pytest.mark.stack
def test_forwarder_follows_a_reshard(clients):
    settings = fresh_settings(clients)
    kinesis = clients.client("kinesis")
    forwarder = stack.Forwarder(clients, settings, poll=0.05)
    forwarder.refresh_shards()
    producer.put_records(kinesis, settings.stream_name, [(f'{{"before":{i}}}\n'.encode(), str(i)) for i in range(50)])
    forwarder.step()
    shard = kinesis.list_shards(StreamName=settings.stream_name)["Shards"][0]
    kinesis.split_shard(
        StreamName=settings.stream_name,
        ShardToSplit=shard["ShardId"],
        NewStartingHashKey=str(int(shard["HashKeyRange"]["EndingHashKey"]) // 2),
    )
    producer.put_records(kinesis, settings.stream_name, [(f'{{"after":{i}}}\n'.encode(), str(i)) for i in range(50)])
    for _ in range(10):
        forwarder.step()
        forwarder.refresh_shards()
    assert forwarder.forwarded == 100
    assert shard["ShardId"] in forwarder.finished
    lines = wait_for_lines(clients.s3, settings.bucket, settings.raw_prefix, 100)
    assert len(lines) == 100
