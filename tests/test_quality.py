"""Model-quality monitoring's rules, on the detector memory alone (the comparison's test is in
test_compare.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from forewarn import quality
from forewarn.detect import DetectorConfig, Memory

DAY = 96
T = datetime(2026, 12, 6, tzinfo=UTC)


def feed(memory, noise_sd: np.ndarray, buckets: int, rng, anomalous: int = 0) -> list[tuple[int, str, str]]:
    """``buckets`` buckets of two series forecast as N(100, 10) with noise of ``noise_sd``; the
    actions ``track`` takes after each."""
    out = []
    for t in range(buckets):
        noise = rng.normal(0, 1, 2) * noise_sd
        actual, z = (100 + noise)[:, None], (noise / 10)[:, None]
        quality.update(memory, np.arange(2), actual, np.full((2, 1), 80.4), np.full((2, 1), 119.6), z,
                       np.full((2, 1), anomalous))
        out += [(t, kind, inc.series) for kind, inc in quality.track(memory, ["a|x", "b|x"], T + timedelta(minutes=15 * t))]
    return out


def test_a_model_that_degrades_alerts_once_after_a_whole_day_and_resolves_with_a_margin():
    rng = np.random.default_rng(3)
    memory = Memory.empty(2, DetectorConfig(quality_window=DAY))
    assert feed(memory, np.array([10.0, 10.0]), DAY, rng) == []  # as good as validation: nothing
    full, coverage, error = quality.rolling(memory)
    assert full.all() and (coverage > quality.COVERAGE_ALERT).all() and (np.abs(error - 1) < 0.3).all()
    actions = feed(memory, np.array([10.0, 40.0]), DAY, rng)  # b's error four times what validation said
    assert [(k, s) for _, k, s in actions] == [("open", "b")] and actions[0][0] < DAY // 2
    assert quality.figures(memory, ["a|x", "b|x"])["degraded_series"] == ["b|x"]
    assert feed(memory, np.array([10.0, 40.0]), DAY, rng, anomalous=1) == []  # anomalous buckets are the incidents' business
    actions = feed(memory, np.array([10.0, 10.0]), DAY, rng)
    assert [(k, s) for _, k, s in actions] == [("resolve", "b")] and actions[0][0] > DAY // 2  # back within the margin


def test_nothing_is_judged_before_a_whole_window_is_counted():
    rng = np.random.default_rng(4)
    memory = Memory.empty(2, DetectorConfig(quality_window=DAY))
    assert feed(memory, np.array([50.0, 50.0]), DAY - 1, rng) == []
    assert [k for _, k, _ in feed(memory, np.array([50.0, 50.0]), 1, rng)] == ["open", "open"]
    incident = quality.incident("b|x", T.timestamp(), 0.4, 3.2)
    assert "held 40.0%" in incident.headline and "3.2 times" in incident.headline and quality.MARK in incident.episode
