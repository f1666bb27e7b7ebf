"""NAB scoring (Numenta Anomaly Benchmark v1.1), implemented from its published rules: anomaly
windows, probationary period, scaled sigmoid, cost profiles, one global threshold chosen by an
exact sweep, 0-100 normalisation against the null and perfect detectors."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

PROFILES = {
    "standard": {"tp": 1.0, "fp": 0.11, "fn": 1.0},
    "reward_low_FP_rate": {"tp": 1.0, "fp": 0.22, "fn": 1.0},
    "reward_low_FN_rate": {"tp": 1.0, "fp": 0.11, "fn": 2.0},
}


def sigmoid(y: np.ndarray | float) -> np.ndarray:
    """NAB's scaled sigmoid: 2 / (1 + e^(5y)) - 1 for y <= 3, else -1."""
    y = np.asarray(y, dtype=float)
    return np.where(y > 3, -1.0, -np.tanh(2.5 * np.minimum(y, 3)))


def probation(n: int) -> int:
    return int(min(math.floor(0.15 * n), 0.15 * 5000))


@dataclass
class FileRows:
    """The per-row values of one file for one profile, and where its windows are."""

    name: str
    scores: np.ndarray  # anomaly scores of the scored rows (i >= P)
    values: np.ndarray  # v_i of the scored rows
    window_of: np.ndarray  # window id of each scored row, -1 outside
    windows: int


def row_values(n: int, windows: list[tuple[int, int]], profile: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """v_i for every row and the window id of each row (-1 outside windows)."""
    values = np.full(n, -profile["fp"])
    window_of = np.full(n, -1)
    idx = np.arange(n)
    for w, (left, right) in enumerate(windows):
        width = right - left + 1
        inside = idx[left : right + 1]
        y = -(right - inside + 1) / width
        values[left : right + 1] = profile["tp"] * sigmoid(y) / sigmoid(-1.0)
        window_of[left : right + 1] = w
    # rows after a window: penalty relative to the most recent preceding window
    for w, (left, right) in enumerate(windows):
        width = right - left + 1
        end = windows[w + 1][0] if w + 1 < len(windows) else n
        after = idx[right + 1 : end]
        if after.size:
            y = (after - right) / max(width - 1, 1)
            values[right + 1 : end] = profile["fp"] * sigmoid(y)
    return values, window_of


def window_rows(timestamps: pd.Series, windows: list[list[str]]) -> list[tuple[int, int]]:
    """Window boundaries (timestamps, inclusive) as row indices."""
    stamps = pd.to_datetime(timestamps).to_numpy()
    out = []
    for start, end in windows:
        left = int(np.searchsorted(stamps, np.datetime64(pd.Timestamp(start)), side="left"))
        right = int(np.searchsorted(stamps, np.datetime64(pd.Timestamp(end)), side="right")) - 1
        out.append((left, right))
    return sorted(out)


def sweep(files: list[FileRows], profile: dict[str, float], minimum: float = 0.0) -> tuple[float, float]:
    """The threshold maximising the corpus raw score, and that score (ties: higher threshold),
    among thresholds of at least ``minimum``."""
    offsets, window_total = [], 0
    for f in files:
        offsets.append(window_total)
        window_total += f.windows
    scores = np.concatenate([f.scores for f in files]) if files else np.array([])
    values = np.concatenate([f.values for f in files]) if files else np.array([])
    window_ids = np.concatenate(
        [np.where(f.window_of >= 0, f.window_of + off, -1) for f, off in zip(files, offsets, strict=True)]
    ) if files else np.array([], dtype=int)
    order = np.argsort(-scores, kind="stable")
    scores, values, window_ids = scores[order], values[order], window_ids[order]
    best_value = np.full(window_total, -np.inf)
    credit = np.full(window_total, -profile["fn"])  # what each window contributes now
    total = float(credit.sum())
    fp_sum = 0.0
    best_score, best_threshold = total, 1.1  # the "no detections" sentinel
    i, n = 0, scores.size
    while i < n:
        j = i
        threshold = scores[i]
        if threshold < minimum:
            break
        while j < n and scores[j] == threshold:
            w = window_ids[j]
            if w >= 0:
                if values[j] > best_value[w]:
                    best_value[w] = values[j]
                    total += values[j] - credit[w]
                    credit[w] = values[j]
            else:
                fp_sum += values[j]
            j += 1
        current = total + fp_sum
        if current > best_score:
            best_score, best_threshold = current, float(threshold)
        i = j
    return best_threshold, best_score


def score_corpus(results: dict[str, pd.DataFrame], labels: dict[str, list[list[str]]],
                 minimum: float = 0.0) -> dict[str, dict[str, float]]:
    """NAB's three profile scores for the files in ``labels`` (name -> result frame with
    ``timestamp`` and ``anomaly_score``), each at its best threshold of at least ``minimum``
    (0: any, NAB's own rule)."""
    n_windows = sum(len(w) for w in labels.values())
    out = {}
    for name, profile in PROFILES.items():
        files = []
        for fname, windows in labels.items():
            frame = results[fname]
            n = len(frame)
            rows = window_rows(frame["timestamp"], windows)
            values, window_of = row_values(n, rows, profile)
            p = probation(n)
            scores = frame["anomaly_score"].to_numpy(dtype=float)
            if np.any((scores < 0) | (scores > 1)) or np.any(np.isnan(scores)):
                raise ValueError(f"{fname}: anomaly scores must lie in [0, 1]")
            files.append(FileRows(fname, scores[p:], values[p:], window_of[p:], len(rows)))
        threshold, raw = sweep(files, profile, minimum)
        null = -profile["fn"] * n_windows
        perfect = profile["tp"] * n_windows
        normalised = 100 * (raw - null) / (perfect - null) if perfect != null else 0.0
        out[name] = {"score": normalised, "raw": raw, "threshold": threshold}
    return out


def load_labels(root: str | Path) -> dict[str, list[list[str]]]:
    return json.loads((Path(root) / "labels" / "combined_windows.json").read_text())
