"""Forecast fit throughput of the training DAG's forecaster (forecast() with the DAG's
configuration: calibration included), per core, for 28 days of 5-minute and of hourly data.

    .venv/bin/python benchmarks/forecast_throughput.py [--series 40]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from forewarn.config import Settings  # noqa: E402
from forewarn.forecast import forecast  # noqa: E402
from forewarn.train import forecast_config  # noqa: E402


def synthetic(n: int, season: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n)
    daily = 1 + 0.5 * np.sin(2 * np.pi * t / season)
    weekly = np.where((t // season) % 7 >= 5, 0.8, 1.05)
    return rng.poisson(20 * daily * weekly).astype(float)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--series", type=int, default=40)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'grain':<10}{'points':>8}{'horizon':>9}{'ms/series':>11}{'series/min/core':>17}")
    for grain in (300, 3600):
        cfg = forecast_config(Settings.load({"grain_seconds": grain}, environ={}))
        n = 28 * 86400 // grain
        data = [synthetic(n, cfg.season, rng) for _ in range(args.series)]
        forecast(data[0], cfg)  # warm-up
        started = time.process_time()
        for y in data:
            forecast(y, cfg)
        per = (time.process_time() - started) / args.series
        print(f"{grain // 60:>4} min  {n:>8,}{cfg.horizon:>9}{1000 * per:>11.1f}{60 / per:>17,.0f}")


if __name__ == "__main__":
    main()
