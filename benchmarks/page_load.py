"""The forewarn page at 10,000 series: how long the first page of the ranked list, the series
view and the incident view take on the embedded stack (moto on loopback).

It writes the comparison's evidence for ``--series`` series x 2 metrics (event_count,
value_mean) over ``--hours`` of 5-minute intervals (the page's default window: 6 hours, 72
objects of 20,000 rows), with the comparison's own writers, as the comparison leaves it: every
``--rollup-every``-th series is rolled up by region (two children among the series counted), a
few series fall in the last hour; and ``--incidents`` incident records (through the registry,
with contributors and related members). Then it times the page's FastAPI app (no login) with a
test client: ``GET /`` cold (nothing parsed yet: a server's first request, or after the newest
interval arrived for every object) and warm (the median of ``--requests``), a later page, a
search, a dimension filter, a parent's series view (cold and warm) and an incident's view.

    .venv/bin/python benchmarks/page_load.py [--series 10000] [--hours 6] [--days 1] [--incidents 60] [--requests 7]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from forewarn.aggregate import parquet_bytes
from forewarn.compare import _evidence_table
from forewarn.config import Settings
from forewarn.layout import evidence_key
from forewarn.local import stack
from forewarn.publish import Incident
from forewarn.registry import open_incident

START = datetime(2026, 11, 20, 4, 0, tzinfo=UTC)
METRICS = ("event_count", "value_mean")


class Sink:
    name = "sns"
    deduplicates = False

    def open(self, incident):
        return f"msg-{incident.token[:8]}"


def series_names(count: int, rollup_every: int) -> list[str]:
    """``count`` names: base series, and for every ``rollup_every``-th its two region roll-ups."""
    names: list[str] = []
    i = 0
    while len(names) < count:
        base = f"svc{i:05d}.requests"
        names.append(base)
        if rollup_every and i % rollup_every == 0:
            names += [f"{base}/region=eu", f"{base}/region=us"]
        i += 1
    return names[:count]


def write_evidence(s3, settings: Settings, names: list[str], hours: int, falling: set[str], first: int = 0, count: int | None = None) -> int:
    """One evidence object per 5-minute interval (``count`` of them from interval ``first``;
    all ``hours`` by default); the ``falling`` series drop to a fifth in the last hour. Returns
    the bytes written."""
    rng = np.random.default_rng(5)
    series = np.repeat(np.asarray(names, dtype=object), len(METRICS))
    metric = np.tile(np.asarray(METRICS, dtype=object), len(names))
    level = np.repeat(rng.uniform(10, 1000, len(names)), len(METRICS))
    drops = np.repeat(np.isin(np.asarray(names, dtype=object), list(falling)), len(METRICS)) & (metric == "event_count")
    intervals = hours * 12

    def one(k: int) -> int:
        start = START + timedelta(minutes=5 * k)
        noise = np.random.default_rng(k).normal(0, 0.03, len(series))
        fall = drops & (k >= intervals - 12)
        actual = level * np.where(fall, 0.2, 1 + noise)
        likelihood = np.where(fall, 0.99, np.clip(np.abs(noise) * 10, 0, 0.9))
        frame = pd.DataFrame({"series": series, "metric": metric, "bucket_start": pd.Timestamp(start), "actual": actual, "mean": level,
                              "lower_95": level * 0.9, "upper_95": level * 1.1, "deviation": noise / 0.03, "likelihood": likelihood,
                              "anomalous": np.where(fall, -1, 0), "cold_start": False, "late": False})
        body = parquet_bytes(_evidence_table(frame))
        s3.put_object(Bucket=settings.bucket, Key=evidence_key(settings, start), Body=body)
        return len(body)

    with ThreadPoolExecutor(4) as pool:
        return sum(pool.map(one, range(first, first + (intervals if count is None else count))))


def write_incidents(s3, settings: Settings, names: list[str], count: int, hours: int) -> list[str]:
    """``count`` open incidents on base series, the first of each rolled-up one naming region=eu;
    returns their tokens."""
    bases = [n for n in names if "/" not in n]
    tokens = []
    for j in range(count):
        series = bases[j]
        started = START + timedelta(hours=hours) - timedelta(minutes=5 * (12 - j % 12))
        incident = Incident(episode=f"{series}|{started:%Y-%m-%dT%H:%M}", series=series, metric="event_count", started=started,
                            direction="below", actual=20.0, expected=100.0, lower=90.0, upper=110.0, likelihood=0.99, impact=2,
                            evidence_uri=settings.s3_uri(evidence_key(settings, started)))
        if f"{series}/region=eu" in names:
            incident.related = [f"{series}/region=eu"]
            incident.contributors = [{"series": f"{series}/region=eu", "dimensions": {"region": "eu"}, "share": 0.9, "deviation": -72.0}]
        open_incident(settings, s3, [Sink()], incident)
        tokens.append(incident.token)
    return tokens


def timed(client, url: str, times: int, forget=None) -> tuple[float, int]:
    """The median of ``times`` requests of ``url`` (``forget`` called before each: cold), and the body's size."""
    walls, size = [], 0
    for _ in range(times):
        if forget:
            forget()
        t = time.perf_counter()
        resp = client.get(url)
        walls.append(time.perf_counter() - t)
        assert resp.status_code == 200, (url, resp.status_code, resp.text[:500])
        size = len(resp.content)
    return statistics.median(walls), size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=10_000, help="series (roll-up children included), each with 2 metrics")
    parser.add_argument("--hours", type=int, default=6, help="hours of 5-minute evidence objects written")
    parser.add_argument("--incidents", type=int, default=60, help="open incident records written")
    parser.add_argument("--rollup-every", type=int, default=50, help="every N-th base series rolled up by region (0: none)")
    parser.add_argument("--days", type=int, default=1, help="days of history the series view shows (1-14)")
    parser.add_argument("--requests", type=int, default=7, help="requests timed per figure (the median is printed)")
    parser.add_argument("--compact", action=argparse.BooleanOptionalAction, default=True,
                        help="compact each whole day of evidence first, as forewarn_train does (evidence.compact_day)")
    parser.add_argument("--port", type=int, default=5083)
    args = parser.parse_args()

    from fastapi.testclient import TestClient

    from forewarn import evidence, ui

    settings = Settings.load({"engine": "duckdb"})
    names = series_names(args.series, args.rollup_every)
    falling = {n for n in names if "/" not in n}
    falling = set(sorted(falling)[: max(args.incidents, 1)]) | {f"{n}/region=eu" for n in sorted(falling)[: max(args.incidents, 1)]}
    with tempfile.TemporaryDirectory() as home:
        state = stack.up(port=args.port, home=Path(home))
        try:
            s3 = stack.local_clients(state["port"]).s3
            t = time.perf_counter()
            written = write_evidence(s3, settings, names, args.hours, falling)
            tokens = write_incidents(s3, settings, names, args.incidents, args.hours)
            seed_s = time.perf_counter() - t
            t = time.perf_counter()
            newest = evidence.list_evidence(s3, settings.bucket, hours=1)
            whole_days = sorted({evidence.evidence_time(k).date() for k, _ in evidence.list_evidence(s3, settings.bucket, hours=args.hours)}
                                - {evidence.evidence_time(newest[-1][0]).date()}) if args.compact and newest else []
            compacted = [evidence.compact_day(s3, settings.bucket, day) for day in whole_days]
            compact_s = time.perf_counter() - t
            client = TestClient(ui.create_app(source=lambda: (settings, s3, None), auth=False))

            def forget() -> None:
                evidence.CACHE.clear()
                ui._RECORDS.clear()

            parent = next(n for n in names if n.endswith("/region=eu")).split("/")[0]
            first_cold, size = timed(client, "/", args.requests, forget)
            first_warm, _ = timed(client, "/", args.requests)
            later, _ = timed(client, "/?page=3", args.requests)
            search, _ = timed(client, "/?q=svc0001", args.requests)
            dims, _ = timed(client, "/?dim=region=eu", args.requests)
            view = f"/series?name={parent}&metric=event_count&days={args.days}"
            series_cold, series_size = timed(client, view, max(args.requests // 2, 1), forget)
            client.get("/")
            series_warm, _ = timed(client, view, args.requests)
            incident, _ = timed(client, f"/incident?token={tokens[0]}", args.requests) if tokens else (float("nan"), 0)
            body = client.get("/").text
            write_evidence(s3, settings, names, args.hours, falling, first=args.hours * 12, count=1)
            t = time.perf_counter()
            client.get("/")
            next_interval = time.perf_counter() - t
        finally:
            stack.down(Path(home))

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = len(names) * len(METRICS) * args.hours * 12
    print(f"evidence                {args.hours * 12:>8} objects  {rows:,} rows, {written / 1e6:,.0f} MB Parquet "
          f"({len(names):,} series x {len(METRICS)} metrics, {args.incidents} incidents; written in {seed_s:.1f} s)")
    print(f"days compacted          {len(compacted):>8}  {sum(c['objects'] for c in compacted)} objects into "
          f"{sum(c['parts'] for c in compacted)} parts in {compact_s:.1f} s (the newest day is read object by object)")
    print(f"GET / cold              {first_cold:>8.3f} s  median of {args.requests}, nothing parsed yet ({size / 1e3:,.0f} kB of HTML)")
    print(f"GET / warm              {first_warm:>8.3f} s  median of {args.requests}, evidence kept parsed")
    print(f"GET / next interval     {next_interval:>8.3f} s  once a new interval's object is written (only it is read)")
    print(f"GET /?page=3            {later:>8.3f} s  warm")
    print(f"GET /?q=svc0001         {search:>8.3f} s  warm")
    print(f"GET /?dim=region=eu     {dims:>8.3f} s  warm")
    print(f"GET /series cold        {series_cold:>8.3f} s  {parent} and its roll-ups, {args.days} day(s) ({series_size / 1e3:,.0f} kB)")
    print(f"GET /series warm        {series_warm:>8.3f} s  after GET / (the page's window kept parsed)")
    print(f"GET /incident           {incident:>8.3f} s  warm")
    print(f"charts on the page      {body.count('<figure'):>8}  "
          f"{'series-metrics ' + body.split('series-metrics ')[1].split(',')[0] if 'series-metrics ' in body else ''}")
    print(f"kept parsed             {evidence.CACHE.size / 2**20:>8.0f} MiB  ({len(evidence.CACHE.parts)} objects)")
    print(f"peak memory (RSS)       {peak_mb:>8,.0f} MB  (this process: the writers and the app)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
