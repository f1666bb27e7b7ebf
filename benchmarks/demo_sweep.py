"""How often would `make demo` detect every injected anomaly with at most one false alarm?

`make demo` runs at the wall-clock time it is started: the live stretch falls at a different
hour of the day (busy or quiet) and the random draws differ with every start. This sweep replays
the demo's detection for many start times without Airflow or the embedded stack, with the same
pieces the DAGs use: the shipped scenario's events (``forewarn.synth``), 5-minute aggregates with
the scenario's roll-ups (``sales.count/region=eu``), the training run's forecaster and backtests
(``forewarn.train``/``forewarn.forecast``), the detector warmed from those backtests, and the
per-series episodes tracked interval by interval with one incident per cause and the regional
drop's contributors (``forewarn.compare``, ``forewarn.dimensions``).
What it leaves out is what the demo checks separately: data faults, Kinesis/Firehose, SQL.

    .venv/bin/python benchmarks/demo_sweep.py --starts 48 --jobs 2

prints one line per start time and the totals.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial

import numpy as np
import pandas as pd

from forewarn.compare import judge, track_episodes, warm_up
from forewarn.config import Settings
from forewarn.detect import DetectorConfig
from forewarn.dimensions import accumulate, fold_children
from forewarn.episodes import incident_of
from forewarn.forecast import forecast
from forewarn.local.demo import match_anomalies
from forewarn.synth import generate_events, load_scenario
from forewarn.train import backtest_frame, day_floor, forecast_config, series_matrix

HISTORY_DAYS = 28
LIVE_MINUTES = 70


def aggregates(events: pd.DataFrame, grain: int, sets: tuple[tuple[str, ...], ...] = ()) -> pd.DataFrame:
    """Each series' buckets, and one series per value combination of each roll-up set (named as
    ``sql/aggregate_rollups.sql`` names them), from the events that carry its keys."""
    import json

    bucket = pd.to_datetime((events["event_epoch"] // grain * grain).astype("int64"), unit="s", utc=True)
    frames = [events.assign(bucket_start=bucket)]
    dims = events["dimensions"].map(lambda d: json.loads(d) if isinstance(d, str) else (d or {}))
    for keys in sets:
        has = dims.map(lambda d, keys=keys: all(k in d for k in keys))
        names = events.loc[has, "series"] + dims[has].map(lambda d, keys=keys: "".join(f"/{k}={d[k]}" for k in keys))
        frames.append(events[has].assign(series=names, bucket_start=bucket[has]))
    grouped = pd.concat(frames, ignore_index=True).groupby(["series", "bucket_start"])["value"]
    return grouped.agg(event_count="size", value_mean="mean").reset_index()


def one_start(now: float, changes: dict | None = None) -> dict:
    live_start = now - LIVE_MINUTES * 60
    scenario = load_scenario(None, live_start=live_start)
    settings = Settings.load({"engine": "duckdb", "rollups": scenario.rollups})
    grain = settings.grain_seconds
    trained_until = day_floor(datetime.fromtimestamp(live_start, UTC))
    history_start = (trained_until - timedelta(days=HISTORY_DAYS)).timestamp()
    history = generate_events(scenario, history_start, live_start)
    live = generate_events(scenario, live_start, now, seed_offset=1)
    sets = settings.rollup_sets
    agg = aggregates(pd.concat([history, live], ignore_index=True), grain, sets)

    cfg = forecast_config(settings)
    until = pd.Timestamp(trained_until)
    index = pd.date_range(until - pd.Timedelta(days=settings.training_days), until, freq=f"{grain}s", inclusive="left")
    future = pd.date_range(until, periods=cfg.horizon, freq=f"{grain}s")
    # the compare runs: whole intervals of 5 minutes inside the live stretch
    first = pd.Timestamp(np.ceil(live_start / grain) * grain, unit="s", tz="UTC")
    buckets = pd.date_range(first, pd.Timestamp(now // grain * grain, unit="s", tz="UTC"), freq=f"{grain}s", inclusive="left")
    detector = replace(DetectorConfig(min_history=86400 // grain, threshold=settings.alert_threshold), **(changes or {}))
    training = agg[agg["bucket_start"] < until]
    rows = []
    for metric in settings.metric_list:
        wide = series_matrix(training, metric, index)
        for name in sorted(agg["series"].unique()):
            y = wide[name].to_numpy(float) if name in wide else np.full(len(index), np.nan)
            fc = forecast(y, cfg)
            backtest = backtest_frame(name, metric, index, fc.backtest, y)
            state = warm_up(backtest, detector, buckets[0], pd.Timedelta(seconds=grain))
            pos = future.get_indexer(buckets)
            got = agg[agg["series"] == name].set_index("bucket_start")[metric].reindex(buckets).to_numpy(float)
            rows += judge(name, metric, buckets, got, fc.mean[pos], fc.lower[0.95][pos], fc.upper[0.95][pos], state, detector)
    episodes: dict = {}
    opened = []
    evidence = pd.DataFrame(rows)
    for bucket in buckets:  # one compare run a bucket, as the DAG's 5-minute intervals
        closed: list = []
        actions = track_episodes(episodes, [r for r in rows if r["bucket_start"] == bucket], settings, closed)
        actions, _, waiting = fold_children(actions, episodes, closed, sets, now=bucket + pd.Timedelta(seconds=grain),
                                            hold=timedelta(minutes=settings.rollup_hold_minutes))
        # what the comparison's "not yet reported" pass opens: a child whose hold is over
        actions += [("open", incident_of(ep, series, settings.alert_threshold)) for series, ep in sorted(episodes.items())
                    if not ep.reported and not ep.member_of and series not in waiting
                    and series not in {i.series for k, i in actions if k == "open"}]
        for series, ep in episodes.items() if sets else ():  # as the comparison does, every run
            if not ep.member_of:
                accumulate(evidence[evidence["bucket_start"] == bucket], series, ep, sets)
        for kind, inc in actions:
            found = list(episodes[inc.series].explained.get("named", [])) if inc.series in episodes else []
            if kind == "open":
                if inc.series in episodes:
                    episodes[inc.series].reported = True
                opened.append({"series": inc.series, "started": pd.Timestamp(inc.started), "metric": inc.metric,
                               "direction": inc.direction, "matched": False, "contributors": found})
            elif kind == "update":  # an update names them afresh, as the comparison's does
                for o in opened:
                    if o["series"] == inc.series and o["started"] == pd.Timestamp(inc.started):
                        o["contributors"] = found
    detection = match_anomalies(scenario, opened, grain)  # the demo's own rule
    false = [(o["series"], o["started"], o["metric"], o["direction"]) for o in opened if not o["matched"]]
    return {"now": datetime.fromtimestamp(now, UTC), "detected": sum(d["incident"] is not None for d in detection),
            "injected": len(detection), "false": false, "missed": [d["series"] for d in detection if d["incident"] is None],
            # a regional drop missed: what its series' incident said, and its roll-ups' own incidents
            "why": [f"{d['series']}: said {d['said'] or 'no incident'}; own incidents {','.join(d['children']) or 'none'}"
                    for d in detection if d["incident"] is None and d["where"]]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=48, help="start times, spread evenly over --days")
    parser.add_argument("--days", type=float, default=7.0, help="span of the start times (days before now)")
    parser.add_argument("--end", type=float, default=None, help="latest start time, epoch seconds (default: now)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="change a detector setting (forewarn.detect.DetectorConfig), e.g. --set threshold=0.6")
    args = parser.parse_args(argv)
    end = args.end or time.time()
    step = args.days * 86400 / args.starts
    starts = [end - k * step - 97 * k for k in range(args.starts)]  # an odd offset: every minute of the hour
    changes = {k: float(v) for k, v in (item.split("=", 1) for item in args.set)}
    t0 = time.perf_counter()
    ok = 0
    with ProcessPoolExecutor(args.jobs) as pool:
        for res in pool.map(partial(one_start, changes=changes), starts):
            good = res["detected"] == res["injected"] and len(res["false"]) <= 1
            ok += good
            fa = ", ".join(f"{s} {m} {d} {b:%H:%M}" for s, b, m, d in res["false"])
            print(f"{res['now']:%a %H:%M} ({res['now'].timestamp():.0f})  {res['detected']}/{res['injected']} detected  {len(res['false'])} false  "
                  f"{'ok ' if good else 'BAD'}  missed={','.join(res['missed']) or '-'}  {fa}"
                  + (f"  ({'; '.join(res['why'])})" if res["why"] else ""), flush=True)
    print(f"demo sweep: {ok}/{args.starts} start times with every anomaly detected and at most one false alarm "
          f"({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
