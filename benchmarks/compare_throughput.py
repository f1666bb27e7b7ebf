"""One forewarn_compare interval at scale: wall time per 5-minute interval and where it goes,
detector state size, peak memory; on the embedded stack (moto on loopback, DuckDB reading the
landing zone), for many series.

It writes ``--days`` of hourly aggregates for ``--series`` count series (the synthetic
generator's events, aggregated), trains them with the training DAG's code (``train_all``),
lands two hours of events after the training day, and runs ``compare_interval`` — exactly what
the DAG's task calls — over ``--intervals`` consecutive 5-minute intervals, with no incident
sink (no series has an anomaly injected). The events land as Firehose lands them: one object a
minute of arrivals, each in the landing zone only once its minute has passed (copied in from a
staging prefix before each interval), so every interval finds five new objects to parse. The
first interval warms the detector from the training backtests and parses the hour before it;
the rest read the state the one before wrote.

    .venv/bin/python benchmarks/compare_throughput.py [--series 500] [--days 14] [--intervals 12] [--shards 1] [--list-anomalous]
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import signal
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from forewarn import compare, producer
from forewarn.aggregate import Window, make_engine, write_aggregates
from forewarn.config import Settings
from forewarn.layout import shard_of, state_key
from forewarn.local import stack
from forewarn.synth import Scenario, SeriesSpec, generate_events, plan_landing
from forewarn.train import train_all

#: Where the live stretch's objects wait until their minute has passed.
STAGING = "staging/"


def land_until(s3, settings: Settings, moment: datetime) -> int:
    """Move the staged objects whose minute of arrivals ended by ``moment`` into the landing zone."""
    staged = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=settings.bucket, Prefix=STAGING)
              for o in page.get("Contents", [])]
    due = [k for k in staged if datetime.strptime(k.rsplit("-1-", 1)[1][:19], "%Y-%m-%d-%H-%M-%S").replace(tzinfo=UTC)
           + timedelta(minutes=1) <= moment]
    for key in due:
        s3.copy_object(Bucket=settings.bucket, Key=key.removeprefix(STAGING), CopySource={"Bucket": settings.bucket, "Key": key})
        s3.delete_object(Bucket=settings.bucket, Key=key)
    return len(due)


TIMED = ("load_forecasts", "read_actuals", "find_state", "_judge_all", "write_state", "put_metrics")


def timed(spent: dict[str, list[float]]) -> None:
    """Wrap the comparison's steps so each interval's time is split by step."""
    for name in TIMED:
        inner = getattr(compare, name)

        def wrapper(*args, _inner=inner, _name=name, **kwargs):
            t = time.perf_counter()
            try:
                return _inner(*args, **kwargs)
            finally:
                spent[_name].append(time.perf_counter() - t)

        setattr(compare, name, wrapper)


def training_aggregates(scenario: Scenario, start: datetime, end: datetime, grain: int, chunk: int = 50) -> pa.Table:
    """The aggregation's output for the scenario's events, computed in pandas a chunk of series
    at a time (the aggregation itself is measured by aggregate_throughput.py)."""
    frames = []
    for i in range(0, len(scenario.series), chunk):
        part = Scenario(scenario.series[i : i + chunk], seed=scenario.seed)
        events = generate_events(part, start.timestamp(), end.timestamp(), seed_offset=i)
        bucket = (events["event_epoch"] // grain * grain).astype("int64")
        grouped = events.assign(bucket_epoch=bucket).groupby(["series", "bucket_epoch"])["value"]
        agg = grouped.agg(event_count="size", value_sum="sum", value_mean="mean", value_stddev="std")
        frames.append(agg.assign(value_p95=grouped.quantile(0.95)).reset_index())
    return pa.Table.from_pandas(pd.concat(frames, ignore_index=True), preserve_index=False)


def prepare(port: int, settings: Settings, scenario: Scenario, days: int, trained_until: datetime,
            intervals: int, trained_shard: int | None = None) -> tuple[int, float, float, int]:
    """History, training and the live stretch's landed events, in a process of its own, so the
    peak memory measured afterwards is the comparison's. With ``trained_shard`` only that
    shard's series have history and forecasts (the others' would be written and never read by
    it); every series lands its events."""
    clients = stack.local_clients(port)
    t = time.perf_counter()
    history_start = trained_until - timedelta(days=days)
    trained = scenario if trained_shard is None else Scenario(
        [s for s in scenario.series if shard_of(s.name, settings.compare_shards) == trained_shard], seed=scenario.seed)
    rows = training_aggregates(trained, history_start, trained_until, settings.grain_seconds)
    write_aggregates(settings, clients.s3, rows, Window(history_start, trained_until, history_start, trained_until))
    prep_s = time.perf_counter() - t
    t = time.perf_counter()
    manifest = train_all(settings, clients.s3, trained_until)
    train_s = time.perf_counter() - t
    live_start = trained_until + timedelta(hours=1)
    plan = plan_landing(scenario, (live_start - timedelta(hours=1)).timestamp(),
                        (live_start + timedelta(minutes=5 * intervals)).timestamp(), settings.lookback_hours, seed_offset=1)
    producer.write_landing(clients.s3, settings.bucket, STAGING + settings.raw_prefix, plan, object_seconds=60)
    return rows.num_rows, prep_s, train_s, len(manifest["batches"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=500)
    parser.add_argument("--days", type=int, default=14, help="training days of history")
    parser.add_argument("--intervals", type=int, default=12, help="consecutive 5-minute intervals compared")
    parser.add_argument("--rate", type=float, default=2.0, help="events per minute per series at the daily mean")
    parser.add_argument("--port", type=int, default=5079)
    parser.add_argument("--shards", type=int, default=1, help="compare_shards: the intervals judge shard 0 of this many")
    parser.add_argument("--train-judged-shard-only", action="store_true",
                        help="give history and forecasts to shard 0's series only (the others still land events)")
    parser.add_argument("--list-anomalous", action="store_true",
                        help="print every bucket found anomalous (none has an anomaly injected): series, metric, actual, band")
    args = parser.parse_args()
    # SIGTERM ends the run as Ctrl-C does, through the `finally` that stops the embedded stack
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    settings = Settings.load({"engine": "duckdb", "training_days": args.days, "compare_delay_minutes": 0,
                              "compare_shards": args.shards})
    shard = 0 if args.shards > 1 else None
    grain = settings.grain_seconds
    trained_until = datetime(2026, 11, 16, tzinfo=UTC)
    rng = np.random.default_rng(7)
    scenario = Scenario([SeriesSpec(f"svc{i:04d}.requests", rate=args.rate * rng.uniform(0.5, 2), value_mean=50 * rng.uniform(0.5, 2),
                                    peak_hour=float(rng.uniform(0, 24))) for i in range(args.series)], seed=11)
    spent: dict[str, list[float]] = defaultdict(list)
    timed(spent)
    flagged: list[pd.DataFrame] = []
    judge_all = compare._judge_all

    def keep_flagged(*a, **k):
        evidence = judge_all(*a, **k)
        if len(evidence):
            flagged.append(evidence[evidence["anomalous"] != 0])
        return evidence

    compare._judge_all = keep_flagged

    with tempfile.TemporaryDirectory() as home:
        state = stack.up(port=args.port, home=Path(home))
        try:
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                n_rows, prep_s, train_s, n_batches = pool.submit(prepare, state["port"], settings, scenario, args.days,
                                                                 trained_until, args.intervals,
                                                                 0 if args.train_judged_shard_only else None).result()
            clients = stack.local_clients(state["port"])
            s3 = clients.s3
            live_start = trained_until + timedelta(hours=1)
            engine = make_engine(settings, clients)
            cloudwatch = clients.client("cloudwatch")
            walls, sizes, judged = [], [], 0
            for k in range(args.intervals):
                start = live_start + timedelta(minutes=5 * k)
                land_until(s3, settings, start + timedelta(minutes=5))
                t = time.perf_counter()
                summary = compare.compare_interval(settings, engine, s3, cloudwatch, [], start, start + timedelta(minutes=5),
                                                   now=start + timedelta(minutes=6), shard=shard)
                walls.append(time.perf_counter() - t)
                judged = len(summary["keys"])
                sizes.append(s3.head_object(Bucket=settings.bucket, Key=state_key(settings, start + timedelta(minutes=5), shard=shard))["ContentLength"])
                print(f"  interval {k + 1:>2}/{args.intervals}  {walls[-1]:6.2f} s  scored {summary['scored']:,}  anomalous "
                      f"{summary['anomalous']}  metrics sent {summary['metrics']['sent']:,}", flush=True)
        finally:
            stack.down(Path(home))

    if args.list_anomalous and flagged:
        rows = pd.concat(flagged).drop_duplicates(["series", "metric", "bucket_start"], keep="last")
        columns = ["series", "metric", "bucket_start", "actual", "mean", "lower_95", "upper_95", "deviation", "likelihood"]
        print(f"anomalous buckets: {len(rows)}")
        print(rows[columns].sort_values(["bucket_start", "series"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    keys = judged or args.series * len(settings.metric_list)  # this shard's series x metrics
    steady = walls[1:] or walls
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    where = f", shard 0 of {args.shards}" if args.shards > 1 else ""
    print(f"series x metrics        {keys:>10,}  ({args.series} series{where}, {args.days} days of {grain // 60}-minute history)")
    print(f"training aggregates     {n_rows:>10,} rows  {prep_s:8.1f} s to generate and write")
    print(f"train_all               {train_s:>10.1f} s  ({n_batches} batches)")
    print(f"first interval          {walls[0]:>10.2f} s  (detector warmed from the training backtests)")
    print(f"interval, median        {statistics.median(steady):>10.2f} s  (of {len(steady)}; the schedule allows 300 s)")
    for name in TIMED:
        later = spent[name][1:] or spent[name]
        print(f"  {name:<22}{statistics.median(later):>10.3f} s  median")
    print(f"state per interval      {statistics.median(sizes) / 1e6:>10.2f} MB Arrow IPC, zstd  ({statistics.median(sizes) / keys / 1e3:.1f} KB a series and metric)")
    print(f"landing objects         {engine.parsed_stats['objects_parsed']:>10,} parsed, {engine.parsed_stats['objects_reused']:,} reused "
          "(one a minute of arrivals; each parsed once, then its parsed lines read)")
    print(f"peak memory (RSS)       {peak_mb:>10,.0f} MB  (this process: the comparisons; history, training and landing ran in another)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
