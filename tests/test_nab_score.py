"""NAB scoring, checked on cases worked out by hand from the published rules."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from forewarn.nab_score import (
    PROFILES,
    FileRows,
    probation,
    row_values,
    score_corpus,
    sigmoid,
    sweep,
    window_rows,
)


def test_sigmoid_reference_values():
    assert sigmoid(-1.0) == pytest.approx(0.98661429815)
    assert sigmoid(-0.5) == pytest.approx(0.84828363996)
    assert sigmoid(0.0) == 0
    assert sigmoid(3.5) == -1


def test_probation():
    assert probation(4032) == 604 and probation(1127) == 169 and probation(10320) == 750


def frame(n: int, hits: dict[int, float]) -> pd.DataFrame:
    stamps = pd.date_range("2014-01-01", periods=n, freq="5min").strftime("%Y-%m-%d %H:%M:%S")
    scores = np.zeros(n)
    for i, v in hits.items():
        scores[i] = v
    return pd.DataFrame({"timestamp": stamps, "anomaly_score": scores})


def window(f: pd.DataFrame, left: int, right: int) -> list[str]:
    return [f.timestamp[left] + ".000000", f.timestamp[right] + ".000000"]


def test_row_values_follow_the_rules():
    values, window_of = row_values(100, [(50, 59)], PROFILES["standard"])
    assert values[50] == pytest.approx(1.0)
    assert values[55] == pytest.approx(0.84828363996 / 0.98661429815)
    assert values[20] == pytest.approx(-0.11)
    assert values[60] == pytest.approx(0.11 * -np.tanh(2.5 * (1 / 9)))
    assert window_of[50] == 0 and window_of[60] == -1


def test_a_perfect_detector_scores_100_and_a_silent_one_0():
    f = frame(100, {50: 1.0})
    labels = {"a.csv": [window(f, 50, 59)]}
    assert score_corpus({"a.csv": f}, labels)["standard"]["score"] == pytest.approx(100)
    silent = frame(100, {})
    result = score_corpus({"a.csv": silent}, labels)
    assert result["standard"]["score"] == pytest.approx(0) and result["standard"]["threshold"] == 1.1


def test_threshold_is_one_for_the_corpus_and_weighs_false_positives():
    # file a: the window is found at its middle (0.8598); file b: a false alarm with a higher score
    a = frame(100, {55: 0.6})
    b = frame(100, {30: 0.9, 70: 0.5})
    labels = {"a.csv": [window(a, 50, 59)], "b.csv": [window(b, 65, 74)]}
    s = score_corpus({"a.csv": a, "b.csv": b}, labels)["standard"]
    # best: threshold 0.5 -> both windows (0.8598 + 0.8598) and one FP (-0.11)
    expected_raw = 2 * 0.84828363996 / 0.98661429815 - 0.11
    assert s["threshold"] == 0.5 and s["raw"] == pytest.approx(expected_raw)
    assert s["score"] == pytest.approx(100 * (expected_raw + 2) / 4)


def test_probationary_rows_are_ignored_and_scores_must_be_in_range():
    f = frame(100, {3: 1.0, 50: 0.7})
    labels = {"a.csv": [window(f, 50, 59)]}
    assert score_corpus({"a.csv": f}, labels)["standard"]["raw"] == pytest.approx(1.0)
    f.loc[10, "anomaly_score"] = 1.5
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        score_corpus({"a.csv": f}, labels)


def test_window_rows_match_timestamps_inclusively():
    f = frame(20, {})
    assert window_rows(f.timestamp, [window(f, 5, 9)]) == [(5, 9)]


def test_the_sweep_chooses_among_thresholds_at_or_above_its_minimum():
    """One file, one window: a detection in it at 0.5 and a false alarm at 0.9. Any threshold,
    the best is 0.5 (both); from 0.6 up only 0.9 (the false alarm alone) or none remain."""
    profile = PROFILES["standard"]
    f = FileRows("f", scores=np.array([0.9, 0.5]), values=np.array([-profile["fp"], 1.0]), window_of=np.array([-1, 0]), windows=1)
    assert sweep([f], profile) == (0.5, pytest.approx(1.0 - profile["fp"]))
    threshold, raw = sweep([f], profile, minimum=0.6)
    assert threshold >= 0.6 and raw == pytest.approx(-profile["fn"])  # nothing detected beats the false alarm
