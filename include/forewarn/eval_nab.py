"""``forewarn eval-nab``: replay NAB-layout series as streams through the training DAG's
forecaster (retrained at every day boundary on the data seen so far, as ``forewarn_train``
does) and the comparison's detector, and write NAB result files; optionally score them."""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from forewarn.detect import DetectorConfig, score
from forewarn.eval_m4 import single_thread_worker
from forewarn.forecast import ForecastConfig, forecast

TRAINING_DAYS = 28
HORIZON_HOURS = 26


#: Grains a series' median spacing snaps to when within 20% of one (whole divisions of a day,
#: so days and weeks are whole numbers of buckets).
NICE_GRAINS = (60, 120, 300, 600, 900, 1200, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


def grain_of(stamps: np.ndarray) -> int:
    """The grid's bucket width in seconds: the median spacing of the rows, snapped to the
    nearest whole division of a day within 20%."""
    gaps = np.diff(stamps)
    gaps = gaps[gaps > 0]
    median = float(np.median(gaps)) if gaps.size else 300.0
    nice = min(NICE_GRAINS, key=lambda g: abs(math.log(g / max(median, 1.0))))
    return nice if abs(nice / max(median, 1.0) - 1) <= 0.2 else max(int(round(median)), 1)


def time_grid(timestamps: pd.Series) -> tuple[np.ndarray, int, np.ndarray]:
    """Each row's bucket on a regular grid (epoch-aligned, ``grain_of`` wide), the grain, and the
    grid's bucket starts (epoch seconds; buckets no row falls in are on it too)."""
    stamps = ((pd.to_datetime(timestamps, utc=True) - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(np.int64)
    grain = grain_of(stamps)
    first = stamps.min() // grain * grain if stamps.size else 0
    bucket = (stamps - first) // grain
    grid = first + grain * np.arange(int(bucket.max()) + 1 if stamps.size else 0)
    return bucket, grain, grid


def forecast_stream(timestamps: pd.Series, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """For every row, the point forecast and 95% band it had when it arrived, with time treated
    as time: the rows are laid on a regular grid (``time_grid``; a bucket holds the mean of its
    rows, a bucket with none is missing, as the aggregation leaves it), the forecaster is refitted
    at each day boundary on the grid seen so far (the last 28 days), as the training DAG does,
    and each row takes its bucket's forecast. A day the series has no rows in fits nothing."""
    values = np.asarray(values, dtype=float)
    bucket, grain, grid = time_grid(timestamps)
    per_day = max(86400 // grain, 2)
    cfg = ForecastConfig(
        season=per_day,
        week=7 * per_day,
        horizon=max(int(round(HORIZON_HOURS * 3600 / grain)), 1),
        max_history=TRAINING_DAYS * per_day,
    )
    finite = np.isfinite(values)
    sums = np.bincount(bucket[finite], weights=values[finite], minlength=grid.size)
    counts = np.bincount(bucket[finite], minlength=grid.size)
    y = np.divide(sums, counts, out=np.full(grid.size, np.nan), where=counts > 0)
    days = grid // 86400
    row_days = np.unique(days[bucket])  # days with rows: each starts a refit
    mean_g, lower_g, upper_g = (np.full(grid.size, np.nan) for _ in range(3))
    models: dict[str, int] = {}
    starts = np.searchsorted(days, row_days)
    retrains = 0
    for k, r in enumerate(starts):
        nxt = starts[k + 1] if k + 1 < len(starts) else grid.size
        if np.count_nonzero(np.isfinite(y[:r])) < 2:
            continue  # nothing to learn from yet
        fc = forecast(y[:r], cfg)
        retrains += 1
        models[fc.model] = models.get(fc.model, 0) + 1
        idx = np.minimum(np.arange(nxt - r), cfg.horizon - 1)  # beyond the horizon: hold the last step
        mean_g[r:nxt] = fc.mean[idx]
        lower_g[r:nxt] = fc.lower[0.95][idx]
        upper_g[r:nxt] = fc.upper[0.95][idx]
    info = {"grain_seconds": grain, "per_day": per_day, "retrains": retrains, "models": models,
            "buckets": int(grid.size), "empty_buckets": int(np.count_nonzero(counts == 0))}
    return mean_g[bucket], lower_g[bucket], upper_g[bucket], info


def replay(timestamps: pd.Series, values: np.ndarray, detector: DetectorConfig | None = None) -> tuple[np.ndarray, dict]:
    """Anomaly likelihood for every row, computed as the rows arrive."""
    mean, lower, upper, info = forecast_stream(timestamps, values)
    detector = detector or DetectorConfig(min_history=info["per_day"])
    likelihood, _, _ = score(values, mean, lower, upper, None, detector)
    return likelihood, info


def read_nab_file(path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """A NAB-layout file and its values as floats (unparseable ones NaN: missing)."""
    frame = pd.read_csv(path)
    return frame, pd.to_numeric(frame["value"], errors="coerce").to_numpy(dtype=float)


def _one(args: tuple[Path, Path, Path]) -> tuple[str, float]:
    path, data_root, out_root = args
    started = time.perf_counter()
    frame, values = read_nab_file(path)
    scores, _ = replay(frame["timestamp"], values)
    rel = path.relative_to(data_root)
    target = out_root / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"timestamp": frame["timestamp"], "value": frame["value"], "anomaly_score": np.round(scores, 12)}).to_csv(target, index=False)
    return str(rel), time.perf_counter() - started


def run(data: str | Path, out: str | Path, jobs: int | None = None, progress: Callable[[int, int, str], None] | None = None) -> dict:
    """Replay every ``data/<category>/<file>.csv`` under ``data``; write ``out/<category>/<file>.csv``."""
    root = Path(data)
    data_root = root / "data" if (root / "data").is_dir() else root
    files = sorted(data_root.glob("*/*.csv"))
    if not files:
        raise FileNotFoundError(f"no <category>/<file>.csv under {data_root}: expected NAB's layout (data/<category>/<file>.csv)")
    out_root = Path(out)
    jobs = jobs or os.cpu_count() or 1
    started = time.perf_counter()
    done = []
    tasks = [(f, data_root, out_root) for f in files]
    # largest first, so two workers finish together
    tasks.sort(key=lambda t: -t[0].stat().st_size)
    with ProcessPoolExecutor(max_workers=jobs, initializer=single_thread_worker) as pool:
        for i, (name, _seconds) in enumerate(pool.map(_one, tasks), 1):
            done.append(name)
            if progress:
                progress(i, len(tasks), name)
    return {"files": len(done), "seconds": time.perf_counter() - started, "jobs": jobs}


def score_results(data: str | Path, out: str | Path) -> dict[str, dict[str, float]]:
    from forewarn.nab_score import load_labels, score_corpus

    labels = load_labels(data)
    results = {name: pd.read_csv(Path(out) / name) for name in labels}
    return score_corpus(results, labels)


def print_scores(scores: dict[str, dict[str, float]], stream=sys.stdout) -> None:
    print(f"{'profile':<22}{'score':>8}{'raw':>10}{'threshold':>11}", file=stream)
    for name, s in scores.items():
        print(f"{name:<22}{s['score']:>8.2f}{s['raw']:>10.3f}{s['threshold']:>11.4f}", file=stream)
