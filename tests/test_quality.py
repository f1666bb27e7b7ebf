"""Model-quality monitoring's rules, on the detector memory alone (the comparison's test is in
test_compare.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

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


class FlakySink:
    """A sink that fails its first ``fail`` opens, and records what it was told."""

    name, deduplicates = "flaky", True

    def __init__(self, fail: int = 0):
        self.fail, self.told = fail, []

    def open(self, incident):
        if self.fail:
            self.fail -= 1
            raise ConnectionError("the service is down")
        self.told.append(("open", incident.episode))
        return {"ok": True}

    def update(self, incident, ref):
        self.told.append(("update", incident.episode))

    def resolve(self, incident, ref):
        self.told.append(("resolve", incident.episode))


@pytest.mark.stack
def test_an_alert_a_sink_missed_is_delivered_later_and_one_the_memory_lost_is_closed(clients):
    """A model-quality alert whose sink failed when it opened is delivered by a later run (the
    row is still degraded); one the registry holds open after the memory lost it (the series is
    no longer forecast, or the state was lost) is closed with a note, not left open for ever."""
    from forewarn.compare import _model_alerts
    from forewarn.registry import list_records

    from helpers import fresh_settings

    settings = fresh_settings(clients)
    rng = np.random.default_rng(5)
    memory = Memory.empty(2, DetectorConfig(quality_window=DAY))
    names = ["a|x", "b|x"]
    assert [(k, s) for _, k, s in feed(memory, np.array([10.0, 60.0]), DAY, rng)] == [("open", "b")]  # track opened it
    opening = quality.incident("b|x", float(memory.q_since[1]), 0.5, 3.0)
    sink, failures = FlakySink(fail=1), []
    first = _model_alerts(settings, clients.s3, [sink], [], names, memory, [("open", opening)], failures, None, T)
    assert first["opened"] == 0 and failures and sink.told == []  # the sink was down
    later = _model_alerts(settings, clients.s3, [sink], [], names, memory, [], [], None, T + timedelta(hours=1))
    assert later["reported_late"] == 1 and sink.told == [("open", opening.episode)]
    again = _model_alerts(settings, clients.s3, [sink], [], names, memory, [], [], None, T + timedelta(hours=2))
    assert again == {"opened": 0, "resolved": 0, "reported_late": 0, "closed": 0}  # nothing twice
    lost = Memory.empty(0, DetectorConfig(quality_window=DAY))  # the series are no longer forecast
    closed = _model_alerts(settings, clients.s3, [sink], [], [], lost, [], [], None, T + timedelta(hours=3))
    assert closed["closed"] == 1 and sink.told[-1] == ("resolve", opening.episode)
    records = [r for _, _, r in list_records(clients.s3, settings.bucket)]
    assert all(r["status"] == "resolved" and "no longer judges this forecast" in r["note"] for r in records)


@pytest.mark.stack
def test_a_rerun_of_an_earlier_interval_leaves_an_alert_the_live_state_holds_open(clients):
    """Rerunning (clearing) an interval from before a model-quality alert opened judges from a
    state that has not seen it: that is no orphan, and it stays open (the live state still holds
    it and resolves it). A state that lost it after it opened still closes it."""
    from forewarn.compare import _model_alerts
    from forewarn.registry import list_records

    from helpers import fresh_settings

    settings = fresh_settings(clients)
    rng = np.random.default_rng(5)
    memory = Memory.empty(2, DetectorConfig(quality_window=DAY))
    names = ["a|x", "b|x"]
    feed(memory, np.array([10.0, 60.0]), DAY, rng)
    started = datetime.fromtimestamp(float(memory.q_since[1]), tz=UTC)
    sink = FlakySink(fail=0)
    _model_alerts(settings, clients.s3, [sink], [], names, memory, [("open", quality.incident("b|x", float(memory.q_since[1]), 0.5, 3.0))],
                  [], None, started + timedelta(minutes=15))
    older = Memory.empty(2, DetectorConfig(quality_window=DAY))  # the state two hours before the alert
    rerun = _model_alerts(settings, clients.s3, [sink], [], names, older, [], [], None, started - timedelta(hours=1),
                          first=started - timedelta(hours=2))
    assert rerun["closed"] == 0 and [r["status"] for _, _, r in list_records(clients.s3, settings.bucket)] == ["open"]
    lost = _model_alerts(settings, clients.s3, [sink], [], names, older, [], [], None, started + timedelta(hours=3),
                         first=started + timedelta(hours=2))
    assert lost["closed"] == 1 and sink.told[-1][0] == "resolve"
