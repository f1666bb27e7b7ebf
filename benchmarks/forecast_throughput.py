"""Forecast fit throughput of the training DAG's forecaster (forecast() with the DAG's
configuration: calibration included), per core, for 28 days of 5-minute and of hourly data.

    .venv/bin/python benchmarks/forecast_throughput.py [--series 40] [--side-by-side 2]

``--side-by-side N`` also runs N fitting processes at once, as N fit tasks on one worker do,
each with BLAS held to one thread (what ``train.fit_batch`` does) and each with numpy's
default of one BLAS thread per core, and prints the wall-clock time per fit.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

from forewarn.config import Settings
from forewarn.forecast import forecast
from forewarn.train import forecast_config

GRAINS = (300, 3600)


def synthetic(n: int, season: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n)
    daily = 1 + 0.5 * np.sin(2 * np.pi * t / season)
    weekly = np.where((t // season) % 7 >= 5, 0.8, 1.05)
    return rng.poisson(20 * daily * weekly).astype(float)


def timed(grain: int, series: int, seed: int) -> tuple[int, float, float]:
    """(points, CPU seconds, wall seconds) per fit of ``series`` generated series."""
    rng = np.random.default_rng(seed)
    cfg = forecast_config(Settings.load({"grain_seconds": grain}, environ={}))
    n = 28 * 86400 // grain
    data = [synthetic(n, cfg.season, rng) for _ in range(series)]
    forecast(data[0], cfg)  # warm-up
    cpu, wall = time.process_time(), time.perf_counter()
    for y in data:
        forecast(y, cfg)
    return n, (time.process_time() - cpu) / series, (time.perf_counter() - wall) / series


def worker(threads: str, series: int, seed: int) -> None:
    for grain in GRAINS:
        if threads == "one":
            with threadpool_limits(1, user_api="blas"):
                _, _, wall = timed(grain, series, seed)
        else:
            _, _, wall = timed(grain, series, seed)
        print(grain, wall, flush=True)


def side_by_side(processes: int, series: int) -> None:
    print(f"\n{processes} fitting processes at once, wall-clock ms per fit (mean over the processes)")
    print(f"{'BLAS threads':<28}" + "".join(f"{g // 60:>7} min" for g in GRAINS))
    for threads, label in (("one", "one per task (fit_batch)"), ("default", "numpy's default (per core)")):
        runs = [subprocess.Popen([sys.executable, __file__, "--worker", threads, "--series", str(series), "--seed", str(k)],  # noqa: S603 - this interpreter, this script
                                 stdout=subprocess.PIPE, text=True) for k in range(processes)]
        walls: dict[int, list[float]] = {g: [] for g in GRAINS}
        for run in runs:
            out, _ = run.communicate()
            if run.returncode:
                raise SystemExit(f"a fitting process failed (exit {run.returncode})")
            for line in out.split("\n"):
                if line.strip():
                    grain, wall = line.split()
                    walls[int(grain)].append(float(wall))
        print(f"{label:<28}" + "".join(f"{1000 * np.mean(walls[g]):>11.1f}" for g in GRAINS))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--series", type=int, default=40)
    parser.add_argument("--side-by-side", type=int, default=0, metavar="N")
    parser.add_argument("--worker", choices=("one", "default"), help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.series, args.seed)
    print(f"{'grain':<10}{'points':>8}{'horizon':>9}{'ms/series':>11}{'series/min/core':>17}")
    with threadpool_limits(1, user_api="blas"):  # per core
        for grain in GRAINS:
            horizon = forecast_config(Settings.load({"grain_seconds": grain}, environ={})).horizon
            n, per, _ = timed(grain, args.series, 0)
            print(f"{grain // 60:>4} min  {n:>8,}{horizon:>9}{1000 * per:>11.1f}{60 / per:>17,.0f}")
    if args.side_by_side:
        side_by_side(args.side_by_side, args.series)


if __name__ == "__main__":
    main()
