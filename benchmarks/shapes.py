"""False alarms and detection delay on generated series of every shape (``forewarn.shapes``),
through the same forecaster and detector as ``forewarn eval-nab``: per clean shape, alert onsets
per series-week at the threshold (``--threshold``, default the detector's); per anomaly shape,
how often it is alerted within 3 buckets of the bucket it becomes detectable, and the median
delay; the same for a spike and a level shift in the young or coarse clean shapes (hourly,
daily, short).

    .venv/bin/python benchmarks/shapes.py [--seeds 10] [--jobs 2] [--shapes a,b] [--threshold 0.6222]
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from forewarn.detect import DetectorConfig
from forewarn.eval_m4 import single_thread_worker
from forewarn.shapes import (
    ANOMALIES,
    CLEAN,
    YOUNG_ANOMALIES,
    anomalous,
    clean,
    delay,
    detected_within,
    false_alarms,
    judge,
)


def _clean(args: tuple[str, int, dict]) -> tuple[str, int, float]:
    shape, seed, changes = args
    g = clean(shape, seed)
    _, onsets = judge(g, counts=shape == "sparse_counts", changes=changes)
    scored_days = g.days - 1 - (g.stamps[g.ignore_before] - g.stamps[0]) / 86400 if g.ignore_before else g.days - 1
    return shape, false_alarms(g, onsets), max(scored_days, 0.0)


def _anomaly(args: tuple[str, int, dict]) -> tuple[str, bool, int | None, int]:
    kind, seed, changes = args
    g = anomalous(kind, seed)
    likelihood, onsets = judge(g, counts=kind == "silence", changes=changes)
    threshold = changes["threshold"]
    return kind, detected_within(g, onsets, likelihood, threshold), delay(g, likelihood, threshold), false_alarms(g, onsets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--shapes", default=",".join([*CLEAN, *ANOMALIES, *YOUNG_ANOMALIES]),
                        help="comma-separated clean shapes and anomaly kinds to run (default: all)")
    parser.add_argument("--threshold", type=float, default=DetectorConfig().threshold,
                        help="the likelihood at which a bucket alerts (default: the detector's, %(default)s)")
    args = parser.parse_args()
    if not 0 < args.threshold < 1:
        parser.error(f"--threshold {args.threshold} is not a likelihood: choose one between 0 and 1")
    changes = {"threshold": args.threshold}  # the rest as eval-nab sets it for each grain
    wanted = set(args.shapes.split(","))
    known = [*CLEAN, *ANOMALIES, *YOUNG_ANOMALIES]
    if wanted - set(known):
        parser.error(f"unknown shapes {sorted(wanted - set(known))}: choose among {', '.join(known)}")
    started = time.perf_counter()
    with ProcessPoolExecutor(args.jobs, initializer=single_thread_worker) as pool:
        fa = list(pool.map(_clean, [(s, k, changes) for s in CLEAN if s in wanted for k in range(args.seeds)]))
        kinds = [a for a in (*ANOMALIES, *YOUNG_ANOMALIES) if a in wanted]
        hits = list(pool.map(_anomaly, [(a, k, changes) for a in kinds for k in range(args.seeds)]))
    print(f"threshold {args.threshold}")
    print(f"{'clean shape':<16}{'series':>7}{'days':>8}{'alerts':>8}{'per series-week':>17}")
    for shape in (s for s in CLEAN if s in wanted):
        rows = [r for r in fa if r[0] == shape]
        alerts, days = sum(r[1] for r in rows), sum(r[2] for r in rows)
        print(f"{shape:<16}{len(rows):>7}{days:>8.0f}{alerts:>8}{alerts / days * 7 if days else float('nan'):>17.2f}")
    print(f"\n{'anomaly':<22}{'series':>7}{'within 3':>10}{'median delay':>14}{'other alerts':>14}")
    first_young = next((k for k in kinds if k in YOUNG_ANOMALIES), None)
    for kind in kinds:
        if kind == first_young:
            print("in young or coarse series (hourly day 14 of 21 and day 28 of 35, daily day 100 of 120, 5-minute day 3 of 4):")
        rows = [r for r in hits if r[0] == kind]
        delays = [r[2] for r in rows if r[2] is not None]
        print(f"{kind:<22}{len(rows):>7}{sum(r[1] for r in rows) / len(rows):>10.0%}"
              f"{(str(int(np.median(delays))) + ' buckets') if delays else 'never':>14}{sum(r[3] for r in rows):>14}")
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
