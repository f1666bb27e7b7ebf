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
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd

from forewarn.config import Settings
from forewarn.detect import DetectorConfig, Memory, score
from forewarn.episodes import Z99
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


@dataclass
class Replay:
    """What a replayed series had as each row arrived: its bucket's forecast and 95% band, the
    detector's likelihood and standardised deviation, and what the replay did (``info``)."""

    mean: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    likelihood: np.ndarray
    z: np.ndarray
    info: dict


def replay_stream(timestamps: pd.Series, values: np.ndarray, detector: DetectorConfig | None = None, counts: bool = False,
                  keep_out_episodes: bool = True, changes: dict | None = None) -> Replay:
    """A series replayed as the DAGs see it, rows in arrival order, with time treated as time:
    the rows are laid on a regular grid (``time_grid``; a bucket holds the mean of its rows, a
    bucket with none is missing, as the aggregation leaves it); at each day boundary the
    forecaster is refitted on the grid seen so far (the last 28 days), as ``forewarn_train``
    does, and the detector (``detector``, default the comparison's with a day of cold start)
    judges each row of the day against its bucket's forecast, its memory carried across days
    (``changes``: fields of that detector's ``DetectorConfig``, or of the forecaster's
    ``ForecastConfig``, set otherwise).
    As in the DAGs, the buckets of the alert episodes raised so far are kept out of every
    later refit (``keep_out_episodes``; see ``EpisodeSpans``), so a model does not learn an anomaly
    as normal. A day the series has no rows in fits nothing."""
    values = np.asarray(values, dtype=float)
    changes, forecast_changes = split_changes(changes)
    bucket, grain, grid = time_grid(timestamps)
    per_day = max(86400 // grain, 2)
    cfg = ForecastConfig(
        season=per_day,
        week=7 * per_day,
        horizon=max(int(round(HORIZON_HOURS * 3600 / grain)), 1),
        max_history=TRAINING_DAYS * per_day,
    )
    cfg = replace(cfg, **forecast_changes)
    detector = replace(detector or DetectorConfig(min_history=per_day), **changes)
    finite = np.isfinite(values)
    sums = np.bincount(bucket[finite], weights=values[finite], minlength=grid.size)
    counts_per_bucket = np.bincount(bucket[finite], minlength=grid.size)
    y = np.divide(sums, counts_per_bucket, out=np.full(grid.size, np.nan), where=counts_per_bucket > 0)
    ended = np.zeros(grid.size, dtype=bool)  # the ended episodes' buckets, kept out of training
    history = y.copy()  # what training sees: those and an open episode's buckets set missing
    days = grid // 86400
    starts = np.searchsorted(days, np.unique(days[bucket]))  # days with rows: each starts a refit
    first_row = np.searchsorted(bucket, np.arange(grid.size + 1))  # the rows of bucket b: first_row[b]..first_row[b+1]
    mean, lower, upper = (np.full(values.size, np.nan) for _ in range(3))
    likelihood, z = np.zeros(values.size), np.full(values.size, np.nan)
    memory = Memory.empty(1, detector)
    episodes = EpisodeSpans(RESOLVE_AFTER, max(3600 // grain, 1))
    models: dict[str, int] = {}
    retrains = 0
    for k, r in enumerate(starts):
        nxt = starts[k + 1] if k + 1 < len(starts) else grid.size
        rows = slice(first_row[r], first_row[nxt])
        if np.count_nonzero(np.isfinite(history[:r])) >= 2:  # else nothing to learn from yet
            fc = forecast(history[:r], cfg)
            retrains += 1
            models[fc.model] = models.get(fc.model, 0) + 1
            step = np.minimum(bucket[rows] - r, cfg.horizon - 1)  # beyond the horizon: hold the last step
            mean[rows], lower[rows], upper[rows] = fc.mean[step], fc.lower[0.95][step], fc.upper[0.95][step]
        likelihood[rows], z[rows], memory = score(values[rows], mean[rows], lower[rows], upper[rows], memory, detector, counts)
        if keep_out_episodes:
            closed, still_open = episodes.update(bucket[rows], likelihood[rows] >= detector.threshold, np.abs(z[rows]) < Z99, nxt)
            for first, last in closed:
                ended[first : last + 1] = True
            out = ended.copy()
            if still_open is not None:
                out[still_open[0] : still_open[1] + 1] = True
            history = np.where(out, np.nan, y)
    info = {"grain_seconds": grain, "per_day": per_day, "retrains": retrains, "models": models,
            "buckets": int(grid.size), "empty_buckets": int(np.count_nonzero(counts_per_bucket == 0)),
            "kept_out_buckets": int(np.count_nonzero(ended & np.isfinite(y)))}
    return Replay(mean, lower, upper, likelihood, z, info)


def split_changes(changes: dict | None) -> tuple[dict, dict]:
    """``changes`` to a replay split into the detector's (``DetectorConfig`` fields) and the
    forecaster's (``ForecastConfig``); the two share no field name."""
    forecaster = {f.name for f in fields(ForecastConfig)}
    items = (changes or {}).items()
    return {k: v for k, v in items if k not in forecaster}, {k: v for k, v in items if k in forecaster}


#: As ``Settings.resolve_after``: buckets back inside the 99% band that end an episode.
RESOLVE_AFTER = Settings.resolve_after


class EpisodeSpans:
    """The stretches of one series that training keeps out, by the comparison's episode rule:
    a bucket at or above the threshold opens an episode, ``resolve_after`` calm buckets (within
    the 99% band) end it; an ended episode is kept out from its first anomalous bucket to its
    last bucket outside the 99% band, an open one to ``open_margin`` buckets after its last
    anomalous one (its record is rewritten hourly), as ``forewarn_train`` reads the
    comparison's episode records (``train.episode_spans``)."""

    def __init__(self, resolve_after: int, open_margin: int) -> None:
        self.resolve_after, self.open_margin = resolve_after, open_margin
        self.open: list[int] | None = None  # [first anomalous, last anomalous, calm buckets, last not calm]

    def update(self, buckets: np.ndarray, anomalous: np.ndarray, calm: np.ndarray,
               until: int) -> tuple[list[tuple[int, int]], tuple[int, int] | None]:
        """Feed one day's rows (their buckets, in order): the spans of the episodes that ended,
        and the span kept out of the next refit (at bucket ``until``) for the one still open."""
        spans = []
        ends = np.r_[buckets[1:] != buckets[:-1], True]  # a bucket's verdict once its last row is in
        start = 0
        for i in np.flatnonzero(ends):
            b = int(buckets[i])
            hot, quiet = bool(anomalous[start : i + 1].any()), bool(calm[start : i + 1].all())
            start = i + 1
            if self.open is None:
                if hot:
                    self.open = [b, b, 0, b]
                continue
            if hot:
                self.open[1] = b
            self.open[2] = self.open[2] + 1 if quiet else 0
            if not quiet:
                self.open[3] = b
            if self.open[2] >= self.resolve_after:
                spans.append((self.open[0], max(self.open[1], self.open[3])))
                self.open = None
        still_open = None if self.open is None else (self.open[0], min(self.open[1] + self.open_margin, until - 1))
        return spans, still_open


def forecast_stream(timestamps: pd.Series, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """For every row, the point forecast and 95% band it had when it arrived (``replay_stream``
    with every bucket learnt)."""
    r = replay_stream(timestamps, values, keep_out_episodes=False)
    return r.mean, r.lower, r.upper, r.info


def replay(timestamps: pd.Series, values: np.ndarray, detector: DetectorConfig | None = None) -> tuple[np.ndarray, dict]:
    """Anomaly likelihood for every row, computed as the rows arrive (``replay_stream``)."""
    r = replay_stream(timestamps, values, detector)
    return r.likelihood, r.info


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


def score_results(data: str | Path, out: str | Path, minimum: float = 0.0) -> dict[str, dict[str, float]]:
    """NAB's profile scores of the result files under ``out``, each at its best threshold of at
    least ``minimum`` (0: NAB's own rule)."""
    from forewarn.nab_score import load_labels, score_corpus

    labels = load_labels(data)
    results = {name: pd.read_csv(Path(out) / name) for name in labels}
    return score_corpus(results, labels, minimum)


def print_scores(scores: dict[str, dict[str, float]], stream=sys.stdout, title: str | None = None) -> None:
    if title:
        print(title, file=stream)
    print(f"{'profile':<22}{'score':>8}{'raw':>10}{'threshold':>11}", file=stream)
    for name, s in scores.items():
        print(f"{name:<22}{s['score']:>8.2f}{s['raw']:>10.3f}{s['threshold']:>11.5f}", file=stream)
