"""How often does the count-shortfall rule fire on ordinary counts? Poisson counts at exactly
the expected rate (a forecast that is right, a band as wide as counting noise) are fed through
``forewarn.detect.shortfall_surprise`` as the detector does, and the onsets at which the run's
surprise first reaches each level are counted.

    .venv/bin/python benchmarks/shortfall_null.py --buckets 1000000
"""

from __future__ import annotations

import argparse
import time
from collections import deque

import numpy as np

from forewarn.detect import DetectorConfig, shortfall_surprise

LEVELS = (10, 12, 14, 16, 18)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buckets", type=int, default=1_000_000, help="buckets per rate")
    parser.add_argument("--rates", default="3,10,50", help="expected events per bucket")
    args = parser.parse_args()
    cap = DetectorConfig().episode
    print(f"{'rate':>6}{'buckets':>11}" + "".join(f"{'>= ' + str(t):>8}" for t in LEVELS) + "   (onsets; default level "
          f"{DetectorConfig().shortfall_surprise:g})")
    for rate in (float(r) for r in args.rates.split(",")):
        started = time.perf_counter()
        counts = np.random.default_rng(1).poisson(rate, args.buckets)
        run: deque = deque()
        onsets = dict.fromkeys(LEVELS, 0)
        previous = 0.0
        for k in counts:
            if k < rate:
                run.append((rate, float(k)))
                if len(run) > cap:
                    run.popleft()
                current = shortfall_surprise(run)
            else:
                run.clear()
                current = 0.0
            for level in LEVELS:
                onsets[level] += previous < level <= current
            previous = current
        print(f"{rate:>6g}{args.buckets:>11,}" + "".join(f"{onsets[t]:>8}" for t in LEVELS)
              + f"   {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
