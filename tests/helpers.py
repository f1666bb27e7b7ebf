"""Shared helpers for tests that need their own resources on the embedded stack."""

from __future__ import annotations

import io
import itertools
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from forewarn.config import Settings

_counter = itertools.count()


def fresh_settings(clients, **changes) -> Settings:
    """Settings on their own bucket, stream and Glue database, bootstrapped on the stack."""
    from forewarn.local.stack import bootstrap

    n = next(_counter)
    settings = Settings.load(
        {
            "engine": "duckdb",
            "bucket": f"forewarn-test-{n}",
            "stream_name": f"forewarn-test-{n}",
            "delivery_stream": f"forewarn-test-{n}",
            "glue_database": f"forewarn_test_{n}",
            "sns_topic": f"forewarn-test-{n}",
            **changes,
        }
    )
    _prune_delivery_streams(clients)
    bootstrap(clients, settings, shards=1)
    return settings


#: Test delivery streams kept: an account holds at most 50 (moto enforces Firehose's quota), and
#: a suite creates more than that; a test's stream is used while it lands, not after.
KEEP_DELIVERY_STREAMS = 20


def _prune_delivery_streams(clients) -> None:
    firehose = clients.client("firehose")
    names = firehose.list_delivery_streams(Limit=10000)["DeliveryStreamNames"]
    tests = sorted((n for n in names if n.startswith("forewarn-test-")), key=lambda n: int(n.rsplit("-", 1)[1]))
    for name in tests[:-KEEP_DELIVERY_STREAMS]:
        firehose.delete_delivery_stream(DeliveryStreamName=name)


def land_and_aggregate(clients, settings: Settings, scenario, start: datetime, end: datetime, hours_per_task: int = 24 * 10) -> None:
    """Land ``scenario``'s events from ``start`` to ``end`` in the Firehose layout and aggregate
    every hour they reach, as the aggregation DAG would."""
    from forewarn import producer
    from forewarn.aggregate import make_engine, range_windows, run_window
    from forewarn.synth import plan_landing

    plan = plan_landing(scenario, start.timestamp(), end.timestamp(), settings.lookback_hours)
    producer.write_landing(clients.s3, settings.bucket, settings.raw_prefix, plan)
    engine = make_engine(settings, clients)
    for w in range_windows(start, end, settings.lookback_hours, hours_per_task):
        run_window(settings, engine, clients.s3, w)


def list_keys(s3, bucket: str, prefix: str) -> list[str]:
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(o["Key"] for o in page.get("Contents", []))
    return sorted(keys)


# --------------------------------------------------------------------------------------------
# What the comparison leaves for the forewarn page: evidence per interval and incident records
# --------------------------------------------------------------------------------------------

PAGE_START = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


class DictS3:
    """The S3 calls ``train.episode_spans`` makes (listing pages, GETs), served from a dict of
    key -> bytes; subclass ``get_object`` to watch the GETs."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects

    def get_paginator(self, _name):
        objects = self.objects

        class Pages:
            def paginate(self, Bucket, Prefix):  # noqa: N803 - boto3's names
                return [{"Contents": [{"Key": k} for k in sorted(objects) if k.startswith(Prefix)]}]
        return Pages()

    def get_object(self, Bucket, Key):  # noqa: N803
        return {"Body": io.BytesIO(self.objects[Key])}


class RecordingSink:
    name = "sns"
    deduplicates = False

    def __init__(self):
        self.opened, self.updated, self.resolved = [], [], []

    def open(self, incident):
        self.opened.append(incident)
        return f"msg-{len(self.opened)}"

    def update(self, incident, ref):
        self.updated.append((incident.revision, ref))

    def resolve(self, incident, ref):
        self.resolved.append(ref)


#: The roll-ups ``seed_page(rollups=True)`` writes: sales.count by region and by channel.
ROLLUP_SETS = (("region",), ("channel",))
#: When sales.count's region=eu falls (an interval before orders.count's drop, by default).
SALES_DROP_BEFORE = 2


def _rollup_rows(k: int, start: datetime, drop_from: int, crowd: int) -> list[dict]:
    """sales.count and its roll-ups at interval ``k`` (region=eu falls to a tenth from
    ``drop_from - SALES_DROP_BEFORE``: the parent and both channels fall with it), and ``crowd``
    calm series of their own."""
    falls = k >= drop_from - SALES_DROP_BEFORE
    eu, us = (6.0 if falls else 60.0), 40.0
    levels = {"sales.count": (eu + us, 100.0), "sales.count/region=eu": (eu, 60.0), "sales.count/region=us": (us, 40.0),
              "sales.count/channel=app": (0.7 * (eu + us), 70.0), "sales.count/channel=web": (0.3 * (eu + us), 30.0)}
    levels.update({f"svc{i:02d}.requests": (10.0 + i, 10.0 + i) for i in range(crowd)})
    rows = []
    for series, (actual, mean) in levels.items():
        low = actual < mean * 0.9
        calm = 0.1 + 0.001 * int(series[3:5]) if series.startswith("svc") else 0.1
        rows.append({"series": series, "metric": "event_count", "bucket_start": pd.Timestamp(start), "actual": actual, "mean": mean,
                     "lower_95": mean * 0.9, "upper_95": mean * 1.1, "deviation": -6.0 if low else 0.1,
                     "likelihood": 0.75 if low else calm, "anomalous": -1 if low else 0, "cold_start": False})
    return rows


def seed_page(settings, s3, intervals: int = 24, drop_from: int = 18, rollups: bool = False, crowd: int = 22) -> int:
    """Evidence for two series' metrics over ``intervals`` 5-minute intervals from PAGE_START, in
    which orders.count drops from interval ``drop_from`` on (an open incident), and a resolved
    incident on payments.value, written with the comparison's own writers. With ``rollups``,
    also sales.count rolled up by region and by channel (``ROLLUP_SETS``), whose region=eu
    falls two intervals earlier (an open incident naming region=eu, the children that joined it
    related, and a label on it), and ``crowd`` calm series (more than a page of charts).
    Returns the number of anomalous buckets."""
    from forewarn.aggregate import parquet_bytes
    from forewarn.compare import _evidence_table
    from forewarn.layout import evidence_key
    from forewarn.publish import Incident
    from forewarn.registry import open_incident, resolve_incident, update_incident

    flagged = 0
    written = []
    for k in range(intervals):
        start = PAGE_START + timedelta(minutes=5 * k)
        rows = []
        for series, metric, level in (("orders.count", "event_count", 100.0), ("payments.value", "value_mean", 20.0)):
            drop = series == "orders.count" and k >= drop_from
            actual = level * (0.2 if drop else 1.0 + 0.01 * np.sin(k))
            rows.append({"series": series, "metric": metric, "bucket_start": pd.Timestamp(start), "actual": actual, "mean": level,
                         "lower_95": level * 0.9, "upper_95": level * 1.1, "deviation": -8.0 if drop else 0.1,
                         "likelihood": 0.8 if drop else 0.1, "anomalous": -1 if drop else 0, "cold_start": False})
            flagged += drop
        if rollups:
            extra = _rollup_rows(k, start, drop_from, crowd)
            flagged += sum(r["anomalous"] != 0 for r in extra)
            rows += extra
        written += rows
        s3.put_object(Bucket=settings.bucket, Key=evidence_key(settings, start), Body=parquet_bytes(_evidence_table(pd.DataFrame(rows))))

    def incident(series: str, metric: str, started: datetime) -> Incident:
        return Incident(episode=f"{series}|{started:%Y-%m-%dT%H:%M}", series=series, metric=metric, started=started, direction="below",
                        actual=20.0, expected=100.0, lower=90.0, upper=110.0, likelihood=0.8, impact=2,
                        evidence_uri=settings.s3_uri(evidence_key(settings, started)))

    sink = RecordingSink()
    drop = incident("orders.count", "event_count", PAGE_START + timedelta(minutes=5 * drop_from))
    assert open_incident(settings, s3, [sink], drop) == (1, True)
    # the mean value of the few orders left joins the episode a bucket later: one update, once
    drop.revision, drop.changes = 1, ["value_mean above its forecast joined"]
    drop.deviations = [{"metric": m, "direction": d, "since": (drop.started + timedelta(minutes=5 * k)).isoformat(), "actual": 1.0,
                        "expected": 1.0, "lower_95": 0.0, "upper_95": 2.0, "likelihood": 0.7} for k, (m, d) in
                       enumerate([("event_count", "below"), ("value_mean", "above")])]
    assert update_incident(settings, s3, [sink], drop) == 1 and update_incident(settings, s3, [sink], drop) == 0 and sink.updated == [(1, "msg-1")]
    earlier = incident("payments.value", "value_mean", PAGE_START + timedelta(minutes=20))
    open_incident(settings, s3, [sink], earlier)
    earlier.ended = PAGE_START + timedelta(minutes=50)
    resolve_incident(settings, s3, [sink], earlier)
    if rollups:
        from forewarn.dimensions import contributors
        from forewarn.labels import Label, write_label

        started = PAGE_START + timedelta(minutes=5 * (drop_from - SALES_DROP_BEFORE))
        sales = incident("sales.count", "event_count", started)
        sales.actual, sales.likelihood = 46.0, 0.75
        sales.related = ["sales.count/region=eu", "sales.count/channel=app", "sales.count/channel=web"]
        sales.contributors = contributors(pd.DataFrame(written), "sales.count", "event_count", ROLLUP_SETS, started, "below")
        assert [c["series"] for c in sales.contributors] == ["sales.count/region=eu"]
        open_incident(settings, s3, [sink], sales)
        write_label(settings, s3, Label(target=sales.episode, kind="real", note="eu card payments down", by="alice",
                                        created=started + timedelta(minutes=30)))
    return flagged


def listening_addresses(pids: list[int]) -> list[tuple[str, int]]:
    """The (address, port) every TCP socket of these processes listens on, read from /proc
    (Linux): the sockets' inodes from each process's descriptors, their addresses from
    /proc/net/tcp and tcp6 (state 0A: listening)."""
    import ipaddress
    import os
    from pathlib import Path

    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            # the kernel prints each 32-bit word of the address in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            out.append((str(ipaddress.ip_address(raw)), int(port, 16)))
    return out
