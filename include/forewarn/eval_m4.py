"""``forewarn eval-m4``: the default forecaster (the training DAG's code and defaults at hourly
grain) on every series of an M4-layout file, with sMAPE, MASE, MSIS and coverage against
seasonal naive when a hold-out is cut."""

from __future__ import annotations

import csv
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from forewarn.forecast import ForecastConfig, coverage, forecast, mase, msis, seasonal_naive, smape

M4_HOURLY = ForecastConfig.for_grain(3600, horizon=48)


def read_m4(path: str | Path) -> list[tuple[str, np.ndarray]]:
    """Rows of ``"V1"`` (id) then values, shorter rows padded with empty cells."""
    out = []
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        next(reader)
        for row in reader:
            values = np.array([float(v) for v in row[1:] if v.strip() != ""])
            out.append((row[0], values))
    return out


def _one(args: tuple[str, np.ndarray, int, ForecastConfig, int | None]) -> dict:
    sid, values, holdout, cfg, keep = args
    history = values[:-holdout] if holdout else values
    if keep:
        history = history[-keep:]
    started = time.perf_counter()
    fc = forecast(history, cfg)
    seconds = time.perf_counter() - started
    result = {"id": sid, "mean": fc.mean, "lo95": fc.lower[0.95], "hi95": fc.upper[0.95], "model": fc.model, "seconds": seconds}
    if holdout:
        actual = values[-holdout:]
        m = cfg.season
        naive = seasonal_naive(history, cfg.horizon, m)
        naive_err = history[m:] - history[:-m]
        q = np.quantile(np.abs(naive_err), 0.95)
        steps = np.sqrt(np.floor(np.arange(cfg.horizon) / m) + 1)
        result["metrics"] = {
            "smape": smape(actual, fc.mean),
            "mase": mase(actual, fc.mean, history, m),
            "msis": msis(actual, fc.lower[0.95], fc.upper[0.95], history, m),
            "coverage": coverage(actual, fc.lower[0.95], fc.upper[0.95]),
            "naive_smape": smape(actual, naive),
            "naive_mase": mase(actual, naive, history, m),
            "naive_msis": msis(actual, naive - q * steps, naive + q * steps, history, m),
            "naive_coverage": coverage(actual, naive - q * steps, naive + q * steps),
        }
    return result


def evaluate(
    train: str | Path, out: str | Path, holdout: int = 0, jobs: int | None = None,
    progress: Callable[[int, int], None] | None = None, cfg: ForecastConfig = M4_HOURLY, first: int | None = None,
    history: int | None = None,
) -> dict:
    """Forecast every series (or the first ``first``); write the CSV; return summary figures.
    ``history`` keeps only each series' last that many values before the holdout (a short
    history, as a series that started recently has)."""
    series = read_m4(train)[:first]
    cfg = replace(cfg, horizon=holdout or cfg.horizon)
    jobs = jobs or os.cpu_count() or 1
    tasks = [(sid, values, holdout, cfg, history) for sid, values in series]
    started = time.perf_counter()
    results = []
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if jobs == 1:
        for i, task in enumerate(tasks, 1):
            results.append(_one(task))
            if progress:
                progress(i, len(tasks))
    else:
        with ProcessPoolExecutor(max_workers=jobs, initializer=single_thread_worker) as pool:
            for i, res in enumerate(pool.map(_one, tasks, chunksize=8), 1):
                results.append(res)
                if progress:
                    progress(i, len(tasks))
    elapsed = time.perf_counter() - started
    h = cfg.horizon
    with open(out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id"] + [f"F{i}" for i in range(1, h + 1)] + [f"lo95_{i}" for i in range(1, h + 1)] + [f"hi95_{i}" for i in range(1, h + 1)])
        for r in results:
            writer.writerow([r["id"]] + [f"{v:.6g}" for v in np.concatenate([r["mean"], r["lo95"], r["hi95"]])])
    summary = {"series": len(results), "seconds": elapsed, "jobs": jobs, "fit_seconds_mean": float(np.mean([r["seconds"] for r in results]))}
    models: dict[str, int] = {}
    for r in results:
        models[r["model"]] = models.get(r["model"], 0) + 1
    summary["models"] = models
    if holdout:
        keys = results[0]["metrics"].keys()
        summary["metrics"] = {k: float(np.mean([r["metrics"][k] for r in results])) for k in keys}
    return summary


def single_thread_worker() -> None:
    """Worker processes use one BLAS thread each: the pool is the parallelism."""
    os.environ["OMP_NUM_THREADS"] = "1"
    threadpool_limits(1)


def print_summary(summary: dict, stream=sys.stdout) -> None:
    print(f"{summary['series']} series in {summary['seconds']:.1f} s on {summary['jobs']} process(es); "
          f"mean fit {1000 * summary['fit_seconds_mean']:.1f} ms; models {summary['models']}", file=stream)
    if "metrics" in summary:
        m = summary["metrics"]
        print(f"{'':16}{'sMAPE':>8}{'MASE':>8}{'MSIS':>8}{'cov95':>8}", file=stream)
        print(f"{'forewarn':16}{m['smape']:>8.2f}{m['mase']:>8.3f}{m['msis']:>8.2f}{m['coverage']:>8.3f}", file=stream)
        print(f"{'seasonal naive':16}{m['naive_smape']:>8.2f}{m['naive_mase']:>8.3f}{m['naive_msis']:>8.2f}{m['naive_coverage']:>8.3f}", file=stream)
