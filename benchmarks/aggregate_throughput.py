"""Aggregation throughput: events per second through the landing zone -> DuckDB -> Parquet path
of forewarn_aggregate (run_window), on the embedded stack, with the shipped demo scenario's
data faults. Also the peak memory of the process.

    .venv/bin/python benchmarks/aggregate_throughput.py [--hours 24] [--rate-scale 10]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from forewarn import producer
from forewarn.aggregate import make_engine, range_windows, run_window
from forewarn.config import Settings
from forewarn.local import stack
from forewarn.synth import load_scenario, plan_landing


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--rate-scale", type=float, default=10.0, help="multiply the demo scenario's event rates")
    parser.add_argument("--port", type=int, default=5077)
    args = parser.parse_args()

    start = datetime(2026, 11, 2, tzinfo=UTC)
    end = start + timedelta(hours=args.hours)
    scenario = load_scenario(live_start=end.timestamp())
    scenario.series = [replace(s, rate=s.rate * args.rate_scale, period_s=s.period_s / args.rate_scale) for s in scenario.series]
    scenario.anomalies = []
    settings = Settings.load({"engine": "duckdb"})

    with tempfile.TemporaryDirectory() as home:
        state = stack.up(port=args.port, home=Path(home))
        try:
            clients = stack.local_clients(state["port"])
            t = time.perf_counter()
            plan = plan_landing(scenario, start.timestamp(), end.timestamp(), settings.lookback_hours)
            gen_s = time.perf_counter() - t
            t = time.perf_counter()
            producer.write_landing(clients.s3, settings.bucket, settings.raw_prefix, plan)
            load_s = time.perf_counter() - t
            engine = make_engine(settings, clients)
            t = time.perf_counter()
            summaries = [run_window(settings, engine, clients.s3, w) for w in range_windows(start, end, settings.lookback_hours, args.hours)]
            agg_s = time.perf_counter() - t
        finally:
            stack.down(Path(home))
    events = sum(s["events"] for s in summaries)
    rows = sum(s["rows"] for s in summaries)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"lines landed          {len(plan):>12,}  ({args.hours} h, {len(scenario.series)} series, rates x{args.rate_scale:g})")
    print(f"generate plan         {gen_s:>12.2f} s")
    print(f"write landing (S3)    {load_s:>12.2f} s")
    print(f"aggregate (1 task)    {agg_s:>12.2f} s  -> {rows:,} rows, {events:,} events")
    print(f"throughput            {events / agg_s:>12,.0f} events/s (one core)")
    print(f"peak RSS              {peak_mb:>12,.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
