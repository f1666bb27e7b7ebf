"""Shared helpers for tests that need their own resources on the embedded stack."""

from __future__ import annotations

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


def seed_page(settings, s3, intervals: int = 24, drop_from: int = 18) -> int:
    """Evidence for two series' metrics over ``intervals`` 5-minute intervals from PAGE_START, in
    which orders.count drops from interval ``drop_from`` on (an open incident), and a resolved
    incident on payments.value, written with the comparison's own writers. Returns the number of
    anomalous buckets."""
    from forewarn.aggregate import parquet_bytes
    from forewarn.compare import _evidence_table
    from forewarn.layout import evidence_key
    from forewarn.publish import Incident
    from forewarn.registry import open_incident, resolve_incident, update_incident

    flagged = 0
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
    return flagged
