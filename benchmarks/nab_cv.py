"""Which detector constants the held-out folds want: leave-one-category-out NAB scores (the
threshold chosen per fold on the other categories within the false-alarm budget, see
``forewarn.nab_cv``) for the defaults and for each candidate setting on its own, beside the
development score (one threshold, 35 files); ``--minimum 0`` lets the folds choose any threshold.

    .venv/bin/python benchmarks/nab_cv.py --data ../shared/nab --jobs 2
    .venv/bin/python benchmarks/nab_cv.py --data ../shared/nab --jobs 2 --settings defaults   # the defaults' row alone
    .venv/bin/python benchmarks/nab_cv.py --data ../shared/nab --jobs 2 --settings defaults --minimum 0
"""

from __future__ import annotations

import argparse
import time

from forewarn.nab_cv import BUDGET_THRESHOLD, CANDIDATES, cv_score, loco, replay_all


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="NAB-layout folder (data/<category>/<file>.csv, labels/combined_windows.json)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--settings", help=f"comma-separated names among: {', '.join(CANDIDATES)} (default: all)")
    parser.add_argument("--minimum", type=float, default=BUDGET_THRESHOLD,
                        help="the lowest threshold a fold may choose (default: the false-alarm budget's, %(default)s; 0: any)")
    args = parser.parse_args()
    if not 0 <= args.minimum <= 1:
        parser.error(f"--minimum {args.minimum} is not a likelihood: choose one between 0 and 1 (0: any threshold)")
    names = args.settings.split(",") if args.settings else list(CANDIDATES)
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        parser.error(f"unknown setting(s) {', '.join(unknown)}: choose among {', '.join(CANDIDATES)}")
    started = time.perf_counter()
    stamps, labels, results = replay_all(args.data, {n: CANDIDATES[n] for n in names}, args.jobs)
    print(f"{len(stamps)} files replayed for {len(names)} settings in {time.perf_counter() - started:.1f} s")
    print(f"thresholds chosen at or above {args.minimum}")
    print(f"{'setting':<24}{'LOCO-CV':>9}{'AWS':>8}{'artif.':>8}{'known':>8}{'development':>13}")
    for name in names:
        folds, dev = loco(stamps, labels, {name: results[name]}, minimum=args.minimum)
        by = {f.held_out: f.score for f in folds}
        print(f"{name:<24}{cv_score(folds):>9.2f}{by['realAWSCloudwatch']:>8.2f}{by['artificialWithAnomaly']:>8.2f}"
              f"{by['realKnownCause']:>8.2f}{dev['score']:>13.2f} @ {dev['threshold']:.5f}", flush=True)
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
