"""``forewarn eval-nab``: replay NAB-layout series as streams through the training DAG's
forecaster (retrained at every day boundary on the data seen so far, as ``forewarn_train``
does) and the comparison's detector, and write NAB result files; optionally score them."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from forewarn.detect import DetectorConfig, SeriesState, score
from forewarn.eval_m4 import single_thread_worker
from forewarn.forecast import ForecastConfig, forecast

TRAINING_DAYS = 28
HORIZON_HOURS = 26


def forecast_stream(timestamps: pd.Series, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """For every row, the point forecast and 95% band it had when it arrived: the forecaster is
    refitted at each day boundary on everything seen so far (the last 28 days), as the training
    DAG does, and its forecast serves the rows until the next boundary."""
    stamps = pd.to_datetime(timestamps)
    grain = float(np.median(np.diff(stamps.to_numpy()).astype("timedelta64[s]").astype(float))) if len(stamps) > 1 else 300.0
    grain = max(grain, 1.0)
    per_day = max(int(round(86400 / grain)), 2)
    cfg = ForecastConfig(
        season=per_day,
        week=7 * per_day,
        horizon=int(round(HORIZON_HOURS * 3600 / grain)),
        max_history=TRAINING_DAYS * per_day,
    )
    days = stamps.dt.floor("D").to_numpy()
    starts = [0] + [i for i in range(1, len(days)) if days[i] != days[i - 1]]
    starts.append(len(values))
    mean = np.full(len(values), np.nan)
    lower = np.full(len(values), np.nan)
    upper = np.full(len(values), np.nan)
    models: dict[str, int] = {}
    for r, nxt in zip(starts[:-1], starts[1:], strict=True):
        if r < 2:
            continue  # nothing to learn from yet
        fc = forecast(values[:r], cfg)
        models[fc.model] = models.get(fc.model, 0) + 1
        steps = nxt - r
        idx = np.minimum(np.arange(steps), cfg.horizon - 1)  # a gap beyond the horizon: hold the last step
        mean[r:nxt] = fc.mean[idx]
        lower[r:nxt] = fc.lower[0.95][idx]
        upper[r:nxt] = fc.upper[0.95][idx]
    return mean, lower, upper, {"grain_seconds": grain, "per_day": per_day, "retrains": len(starts) - 2, "models": models}


def replay(timestamps: pd.Series, values: np.ndarray, detector: DetectorConfig | None = None) -> tuple[np.ndarray, dict]:
    """Anomaly likelihood for every row, computed as the rows arrive."""
    mean, lower, upper, info = forecast_stream(timestamps, values)
    detector = detector or DetectorConfig(min_history=info["per_day"])
    likelihood, _, _ = score(values, mean, lower, upper, SeriesState(), detector)
    return likelihood, info


def _one(args: tuple[Path, Path, Path]) -> tuple[str, float]:
    path, data_root, out_root = args
    started = time.perf_counter()
    frame = pd.read_csv(path)
    values = pd.to_numeric(frame["value"], errors="coerce").to_numpy(dtype=float)
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
