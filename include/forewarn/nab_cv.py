"""Leave-one-category-out validation on a NAB-layout corpus: a score that predicts how the detector
does on series nobody tuned it to.

Every file is replayed as ``forewarn eval-nab`` does (daily refits that keep the detector's
episodes out of training, as the DAGs do) once for every candidate detector setting. Then, for each category with anomaly windows
in turn (the held-out fold), the setting *and* the threshold are chosen on the other categories
with windows (the best standard-profile raw score there, among thresholds within the false-alarm
budget: ``BUDGET_THRESHOLD``), and the held-out category is scored at
that setting and threshold, together with the files of every category without windows (their
false alarms always count). The cross-validated score is the mean of the held-out scores, each
normalised with NAB's rule over its own scoring set's windows.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from forewarn.eval_m4 import single_thread_worker
from forewarn.eval_nab import read_nab_file, replay_stream
from forewarn.nab_score import PROFILES, FileRows, load_labels, probation, row_values, sweep, window_rows


def category_of(name: str) -> str:
    return name.split("/", 1)[0]


def _replay_file(args: tuple[Path, dict[str, Any]]) -> np.ndarray:
    path, changes = args
    frame, values = read_nab_file(path)
    return replay_stream(frame["timestamp"], values, changes=changes).likelihood


def replay_all(data: str | Path, variants: dict[str, dict[str, Any]], jobs: int | None = None
               ) -> tuple[dict[str, pd.Series], dict[str, list[list[str]]], dict[str, dict[str, np.ndarray]]]:
    """Every labelled file replayed as the DAGs see it (``eval_nab.replay_stream``: daily refits
    that keep the detector's episodes out) once per variant (a name and its changes to
    ``DetectorConfig`` or ``ForecastConfig``; the episodes kept out depend on the detector, so so
    do the forecasts):
    the files' timestamps, the labels, and per variant every file's likelihoods."""
    root = Path(data)
    labels = load_labels(root)
    names = sorted(labels, key=lambda n: -(root / "data" / n).stat().st_size)  # largest first, so workers finish together
    stamps = {n: pd.read_csv(root / "data" / n, usecols=["timestamp"])["timestamp"] for n in names}
    tasks = [(v, n) for v in variants for n in names]
    with ProcessPoolExecutor(jobs or os.cpu_count() or 1, initializer=single_thread_worker) as pool:
        scores = list(pool.map(_replay_file, [(root / "data" / n, variants[v]) for v, n in tasks]))
    results: dict[str, dict[str, np.ndarray]] = {v: {} for v in variants}
    for (v, n), likelihood in zip(tasks, scores, strict=True):
        results[v][n] = likelihood
    return stamps, labels, results


def file_rows(stamps: dict[str, pd.Series], labels: dict[str, list[list[str]]], scores: dict[str, np.ndarray],
              profile: dict[str, float]) -> dict[str, FileRows]:
    out = {}
    for name, windows in labels.items():
        n = len(stamps[name])
        values, window_of = row_values(n, window_rows(stamps[name], windows), profile)
        p = probation(n)
        s = np.asarray(scores[name], dtype=float)
        if np.any(~np.isfinite(s)) or np.any((s < 0) | (s > 1)):
            raise ValueError(f"{name}: anomaly scores must be finite and in [0, 1]")
        out[name] = FileRows(name, s[p:], values[p:], window_of[p:], len(windows))
    return out


def raw_at(files: Iterable[FileRows], profile: dict[str, float], threshold: float) -> float:
    """NAB's raw score at a fixed threshold: per window the value of its earliest detection (or
    the miss cost), plus the (negative) values of the detections outside every window."""
    total = 0.0
    for f in files:
        hit = f.scores >= threshold
        inside = f.window_of >= 0
        total += float(f.values[hit & ~inside].sum())
        for w in range(f.windows):
            rows = hit & (f.window_of == w)
            total += float(f.values[rows].max()) if rows.any() else -profile["fn"]
    return total


def normalised(raw: float, windows: int, profile: dict[str, float]) -> float:
    null, perfect = -profile["fn"] * windows, profile["tp"] * windows
    return 100 * (raw - null) / (perfect - null) if perfect != null else 0.0


@dataclass(frozen=True)
class Fold:
    held_out: str
    variant: str
    threshold: float
    score: float  # held-out category plus the categories without windows, at the chosen setting
    in_sample: float  # the same set at its own best threshold and variant (what tuning on it gives)
    windows: int
    files: int


#: The lowest threshold (on a grid of 0.005) at which every generated clean shape
#: (``forewarn.shapes``, ten seeds) keeps within the false-alarm budget of one alert a
#: series-week: at 0.61 heavy-tailed noise gives 1.12 (``benchmarks/shapes.py --threshold``;
#: ``benchmarks/README.md``). NAB's standard profile prices a false alarm at a ninth of a miss
#: and chooses thresholds at which people would be paged more often than that (0.592 on the
#: development files); the folds choose among those at or above this one.
BUDGET_THRESHOLD = 0.615


def loco(stamps: dict[str, pd.Series], labels: dict[str, list[list[str]]], results: dict[str, dict[str, np.ndarray]],
         profile_name: str = "standard", minimum: float = BUDGET_THRESHOLD) -> tuple[list[Fold], dict[str, Any]]:
    """The folds and the development score (all files, one variant and threshold chosen on them),
    each threshold chosen among those of at least ``minimum`` (0: any)."""
    profile = PROFILES[profile_name]
    rows = {v: file_rows(stamps, labels, scores, profile) for v, scores in results.items()}
    categories = sorted({category_of(n) for n in labels})
    with_windows = [c for c in categories if any(labels[n] for n in labels if category_of(n) == c)]
    without = [c for c in categories if c not in with_windows]
    folds = []
    for held in with_windows:
        train = [n for n in labels if category_of(n) in with_windows and category_of(n) != held]
        test = [n for n in labels if category_of(n) == held or category_of(n) in without]
        best = max(((sweep([rows[v][n] for n in train], profile, minimum), v) for v in rows),
                   key=lambda t: (t[0][1], t[1] == "defaults"))
        (threshold, _), variant = best
        windows = sum(len(labels[n]) for n in test)
        held_score = normalised(raw_at([rows[variant][n] for n in test], profile, threshold), windows, profile)
        in_sample = max(normalised(sweep([rows[v][n] for n in test], profile, minimum)[1], windows, profile) for v in rows)
        folds.append(Fold(held, variant, threshold, held_score, in_sample, windows, len(test)))
    windows = sum(len(w) for w in labels.values())
    dev = max(((sweep(list(rows[v].values()), profile, minimum), v) for v in rows), key=lambda t: (t[0][1], t[1] == "defaults"))
    (dev_threshold, dev_raw), dev_variant = dev
    development = {"score": normalised(dev_raw, windows, profile), "threshold": dev_threshold, "variant": dev_variant,
                   "files": len(labels), "windows": windows}
    return folds, development


def cv_score(folds: list[Fold]) -> float:
    return float(np.mean([f.score for f in folds])) if folds else float("nan")


def print_folds(folds: list[Fold], development: dict[str, Any], print_: Callable[[str], None] = print) -> None:
    print_(f"{'held-out fold (+ no-window files)':<36}{'files':>6}{'windows':>8}{'variant':>22}{'threshold':>11}"
           f"{'held-out':>10}{'tuned on it':>12}")
    for f in folds:
        print_(f"{f.held_out:<36}{f.files:>6}{f.windows:>8}{f.variant[:21]:>22}{f.threshold:>11.5f}{f.score:>10.2f}{f.in_sample:>12.2f}")
    print_(f"leave-one-category-out (mean of {len(folds)} folds){'':<9}{cv_score(folds):>50.2f}")
    print_(f"development ({development['files']} files, {development['windows']} windows, one threshold {development['threshold']:.5f}, "
           f"variant {development['variant']}): {development['score']:.2f}")


#: Settings the folds may choose among (one constant changed at a time, each value a different
#: idea of what the constant should be); ``defaults`` wins ties. A constant earns its place when
#: the held-out folds score lower without it (``benchmarks/nab_cv.py``).
CANDIDATES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "novelty_weight=1": {"novelty_weight": 1.0},
    "novelty_weight=20": {"novelty_weight": 20.0},
    "novelty_weight=70": {"novelty_weight": 70.0},
    "correction_window=0": {"correction_window": 0},
    "repeat_damping=1": {"repeat_damping": 1.0},
    "tail_fraction=0": {"tail_fraction": 0.0},
    "tail_fraction=0.2": {"tail_fraction": 0.2},
    "excursion_reference=0": {"excursion_reference": 0.0},
    "excursion_reference=2.5": {"excursion_reference": 2.5},
    "excursion_reference=3.5": {"excursion_reference": 3.5},
    "excursion_min=25": {"excursion_min": 25},
    "week_half=0": {"week_half": 0},
    "week_half=3": {"week_half": 3},
    "week_half=12": {"week_half": 12},
}


def run_cv(data: str | Path, jobs: int | None = None, variants: dict[str, dict[str, Any]] | None = None,
           print_: Callable[[str], None] = print) -> tuple[list[Fold], dict[str, Any]]:
    """``forewarn eval-nab --cv``: the folds with only the threshold chosen per fold (the
    defaults), then with the setting chosen per fold among ``variants`` (default
    ``CANDIDATES``)."""
    import time

    started = time.perf_counter()
    variants = CANDIDATES if variants is None else variants
    stamps, labels, results = replay_all(data, variants, jobs)
    print_(f"{len(stamps)} files replayed for {len(variants)} setting(s) (detector or forecaster) in {time.perf_counter() - started:.1f} s")
    print_(f"threshold chosen per fold within the false-alarm budget (at least {BUDGET_THRESHOLD}), the detector's defaults:")
    folds, development = loco(stamps, labels, {"defaults": results["defaults"]})
    print_folds(folds, development, print_)
    print_("any threshold (NAB's own rule; below the budget's, clean series alert more than once a week):")
    print_folds(*loco(stamps, labels, {"defaults": results["defaults"]}, minimum=0.0), print_)
    if len(variants) > 1:
        print_(f"setting and threshold chosen per fold among {len(variants)} candidates, the threshold within the budget "
               f"(at least {BUDGET_THRESHOLD}, measured for the defaults):")
        nested, nested_dev = loco(stamps, labels, results)
        print_folds(nested, nested_dev, print_)
    return folds, development
