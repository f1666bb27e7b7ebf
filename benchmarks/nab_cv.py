"""Which detector constants the held-out folds want: leave-one-category-out NAB scores (the
threshold chosen per fold on the other categories, see ``forewarn.nab_cv``) for the defaults and
for each candidate setting on its own, beside the development score (one threshold, 35 files).

    .venv/bin/python benchmarks/nab_cv.py --data ../shared/nab --jobs 2
"""

from __future__ import annotations

import argparse
import time

from forewarn.nab_cv import CANDIDATES, cv_score, loco, replay_all


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="NAB-layout folder (data/<category>/<file>.csv, labels/combined_windows.json)")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    started = time.perf_counter()
    stamps, labels, results = replay_all(args.data, CANDIDATES, args.jobs)
    print(f"{len(stamps)} files replayed for {len(CANDIDATES)} settings in {time.perf_counter() - started:.1f} s")
    print(f"{'setting':<24}{'LOCO-CV':>9}{'AWS':>8}{'artif.':>8}{'known':>8}{'development':>13}")
    for name in CANDIDATES:
        folds, dev = loco(stamps, labels, {name: results[name]})
        by = {f.held_out: f.score for f in folds}
        print(f"{name:<24}{cv_score(folds):>9.2f}{by['realAWSCloudwatch']:>8.2f}{by['artificialWithAnomaly']:>8.2f}"
              f"{by['realKnownCause']:>8.2f}{dev['score']:>13.2f}", flush=True)
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
