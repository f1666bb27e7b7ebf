"""What each part of the detector is worth on a NAB-layout corpus: the forecasts are replayed once
per file (as `forewarn eval-nab` does), then the detector is rerun with one setting changed at a
time and scored with the NAB rules.

    .venv/bin/python benchmarks/nab_ablation.py --data ../shared/nab --jobs 2
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import pandas as pd

from forewarn.detect import DetectorConfig, score
from forewarn.eval_m4 import single_thread_worker
from forewarn.eval_nab import forecast_stream
from forewarn.nab_score import load_labels, score_corpus

VARIANTS: dict[str, dict] = {
    "defaults": {},
    "novelty weight 1 (a range excess counts like any deviation)": {"novelty_weight": 1.0},
    "novelty weight 10": {"novelty_weight": 10.0},
    "novelty weight 20": {"novelty_weight": 20.0},
    "novelty weight 70": {"novelty_weight": 70.0},
    "novelty from the first value (novelty_after=0)": {"novelty_after": 0},
    "no error-corrected view (correction_window=0)": {"correction_window": 0},
    "no repeat damping (repeat_damping=1)": {"repeat_damping": 1.0},
    "no fitted tail beyond the record (tail_fraction=0)": {"tail_fraction": 0.0},
    "fitted tail on the top 5%": {"tail_fraction": 0.05},
    "fitted tail on the top 20%": {"tail_fraction": 0.2},
}


def _forecast(path: Path) -> tuple[str, tuple]:
    frame = pd.read_csv(path)
    values = pd.to_numeric(frame["value"], errors="coerce").to_numpy(dtype=float)
    mean, lower, upper, info = forecast_stream(frame["timestamp"], values)
    return path.name, (frame["timestamp"], values, mean, lower, upper, info["per_day"])


def _variant(args: tuple[str, dict, dict, dict]) -> tuple[str, dict]:
    name, changes, streams, labels = args
    results = {}
    for fname, (stamps, values, mean, lower, upper, per_day) in streams.items():
        cfg = replace(DetectorConfig(min_history=per_day), **changes)
        likelihood, _, _ = score(values, mean, lower, upper, None, cfg)
        results[fname] = pd.DataFrame({"timestamp": stamps, "anomaly_score": likelihood})
    return name, score_corpus(results, labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="NAB-layout folder (data/<category>/<file>.csv, labels/combined_windows.json)")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    root = Path(args.data)
    labels = load_labels(root)
    files = {name: root / "data" / name for name in labels}
    started = time.perf_counter()
    with ProcessPoolExecutor(args.jobs, initializer=single_thread_worker) as pool:
        by_file = dict(pool.map(_forecast, files.values()))
        streams = {name: by_file[path.name] for name, path in files.items()}
        print(f"forecasts replayed for {len(streams)} files in {time.perf_counter() - started:.1f} s")
        print(f"{'variant':<62}{'standard':>10}{'low FP':>9}{'low FN':>9}")
        jobs = [(name, changes, streams, labels) for name, changes in VARIANTS.items()]
        for name, scores in pool.map(_variant, jobs):
            s = {k: v["score"] for k, v in scores.items()}
            print(f"{name:<62}{s['standard']:>10.2f}{s['reward_low_FP_rate']:>9.2f}{s['reward_low_FN_rate']:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
