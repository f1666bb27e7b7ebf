"""Series as they really arrive, generated: irregular sampling, hourly and daily grains with a
few weeks of history, short series, small counts with rare bursts, heavy-tailed values, a level
shift that becomes the new normal, long flat stretches; and the anomaly shapes a detector must
catch in them (spike, dip, level shift, variance change, silence, slow drift).

Each generator returns rows (timestamps and values, in arrival order) plus, for an injected
anomaly, the span it covers and the row from which it is detectable; ``judge`` replays them
through the same forecaster and detector as ``forewarn eval-nab`` (time grid, daily refits).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from forewarn.detect import DetectorConfig

T0 = 1_780_000_000 // 86400 * 86400  # a midnight, UTC

#: Clean shapes: what each is, in words.
CLEAN = {
    "seasonal_5min": "5-minute sensor with a daily cycle and Gaussian noise, 21 days",
    "irregular": "about every 5 minutes, jittered by up to 60 s, 30% of reads missing, a 6-hour outage, duplicate reads",
    "hourly": "hourly, daily and weekly cycles, 21 days",
    "hourly_5w": "the same hourly series, 35 days",
    "daily": "daily, a weekly cycle, 120 days",
    "short": "5-minute, 4 days only",
    "sparse_counts": "5-minute counts of about 0.4 events, with the odd burst of 3-6 (ordinary for it)",
    "heavy_tailed": "5-minute values with Student-t noise (3 degrees of freedom)",
    "new_normal": "5-minute, a lasting 40% level shift on day 10 (alerting at the shift is right; after it, not)",
    "flat": "5-minute, constant for 1-6 hours at a time (any time of day), stepping between three levels",
}

#: Anomaly shapes injected into the 5-minute daily cycle (and, for ``silence``, its counts).
ANOMALIES = ("spike", "dip", "level_shift", "variance_change", "silence", "slow_drift")

#: A spike of 10 noise sd and a lasting level shift of 6 injected into a young or coarse clean
#: shape, at a random time of the given day: the clean shape, the day, its noise sd.
YOUNG_ANOMALIES = {
    f"{base}_{kind}": (base, day, sd)
    for base, day, sd in (("hourly", 14, 6.0), ("hourly_5w", 28, 6.0), ("daily", 100, 25.0), ("short", 3, 3.0))
    for kind in ("spike", "level_shift")
}


@dataclass
class Generated:
    shape: str
    stamps: np.ndarray  # epoch seconds, one per row
    values: np.ndarray
    grain: int  # nominal spacing
    anomaly: tuple[int, int] | None = None  # rows [start, end) of the injected anomaly
    detectable: int | None = None  # the row from which it can be told apart (a slow drift, a variance change: its first deviation of 4 noise sd)
    ignore_before: int = 0  # rows before this are not counted for false alarms (a new normal's transition)

    @property
    def days(self) -> float:
        return float(self.stamps[-1] - self.stamps[0]) / 86400 if self.stamps.size > 1 else 0.0


def _daily(t: np.ndarray, amplitude: float = 0.3, peak_hour: float = 14.0) -> np.ndarray:
    return 1 + amplitude * np.cos(2 * np.pi * ((t % 86400) / 3600 - peak_hour) / 24)


def clean(shape: str, seed: int) -> Generated:
    rng = np.random.default_rng(seed)
    if shape == "seasonal_5min":
        t = T0 + np.arange(21 * 288) * 300.0
        return Generated(shape, t, 100 * _daily(t) + rng.normal(0, 3, t.size), 300)
    if shape == "irregular":
        t = T0 + np.arange(21 * 288) * 300.0 + rng.uniform(-60, 60, 21 * 288)
        keep = rng.random(t.size) > 0.3
        keep[(t > T0 + 10 * 86400) & (t < T0 + 10 * 86400 + 6 * 3600)] = False
        t = np.sort(np.r_[t[keep], t[keep][-600:-580] + 1.0])
        return Generated(shape, t, 50 * _daily(t) + rng.normal(0, 1.5, t.size), 300)
    if shape in ("hourly", "hourly_5w"):
        t = T0 + np.arange((35 if shape == "hourly_5w" else 21) * 24) * 3600.0
        weekly = 1 - 0.25 * (((t // 86400) % 7) >= 5)
        return Generated(shape, t, 200 * _daily(t, 0.4) * weekly + rng.normal(0, 6, t.size), 3600)
    if shape == "daily":
        t = T0 + np.arange(120) * 86400.0
        weekly = 1 - 0.3 * (((t // 86400) % 7) >= 5)
        return Generated(shape, t, 1000 * weekly + rng.normal(0, 25, t.size), 86400)
    if shape == "short":
        t = T0 + np.arange(4 * 288) * 300.0
        return Generated(shape, t, 80 * _daily(t) + rng.normal(0, 3, t.size), 300)
    if shape == "sparse_counts":
        t = T0 + np.arange(21 * 288) * 300.0
        y = rng.poisson(0.4 * _daily(t, 0.5), t.size).astype(float)
        bursts = rng.random(t.size) < 1 / 300
        y[bursts] += rng.integers(3, 7, bursts.sum())
        return Generated(shape, t, y, 300)
    if shape == "heavy_tailed":
        t = T0 + np.arange(21 * 288) * 300.0
        return Generated(shape, t, 100 * _daily(t) + 2 * rng.standard_t(3, t.size), 300)
    if shape == "new_normal":
        t = T0 + np.arange(21 * 288) * 300.0
        y = 100 * _daily(t) + rng.normal(0, 3, t.size)
        shift = 10 * 288
        y[shift:] *= 1.4
        return Generated(shape, t, y, 300, ignore_before=shift + 288)  # a day to take in the new level
    if shape == "flat":
        t = T0 + np.arange(21 * 288) * 300.0
        lengths = rng.integers(12, 73, size=t.size // 12)  # stretches of 1 to 6 hours, starting at any time
        steps = np.repeat(rng.choice([20.0, 35.0, 50.0], size=lengths.size), lengths)[: t.size]
        return Generated(shape, t, steps, 300)
    raise ValueError(f"unknown shape {shape!r}: {', '.join(CLEAN)}")


def anomalous(kind: str, seed: int) -> Generated:
    """The 5-minute daily cycle (21 days, noise sd 3 around 100) with one anomaly on day 18, at
    a random time of day; or one of ``YOUNG_ANOMALIES``."""
    if kind in YOUNG_ANOMALIES:
        return _young(kind, seed)
    rng = np.random.default_rng(10_000 + seed)
    t = T0 + np.arange(21 * 288) * 300.0
    level = 100 * _daily(t)
    y = level + rng.normal(0, 3, t.size)
    a = 18 * 288 + int(rng.integers(0, 288))
    if kind == "spike":
        y[a] += 30
        span = (a, a + 1)
    elif kind == "dip":
        y[a] -= 30
        span = (a, a + 1)
    elif kind == "level_shift":
        y[a:] += 25
        span = (a, t.size)
    elif kind == "variance_change":
        y[a : a + 36] = level[a : a + 36] + rng.normal(0, 15, 36)
        # detectable, as a slow drift is, from the first deviation of 4 noise sd (before it, the
        # wider noise has shown nothing the old noise could not)
        out = np.flatnonzero(np.abs(y[a : a + 36] - level[a : a + 36]) >= 4 * 3)
        return Generated(kind, t, y, 300, anomaly=(a, a + 36), detectable=a + int(out[0]) if out.size else a + 36)
    elif kind == "silence":  # a count that stops: the series is a count of events
        y = rng.poisson(level / 5).astype(float)
        y[a : a + 12] = 0
        span = (a, a + 12)
    elif kind == "slow_drift":
        y[a : a + 72] += np.linspace(0, 30, 72)
        return Generated(kind, t, y, 300, anomaly=(a, a + 72), detectable=a + int(np.ceil(4 * 3 / 30 * 71)))
    else:
        raise ValueError(f"unknown anomaly {kind!r}: {', '.join(ANOMALIES)}")
    return Generated(kind, t, y, 300, anomaly=span, detectable=span[0])


def judge(g: Generated, cfg: DetectorConfig | None = None, counts: bool = False, changes: dict | None = None
          ) -> tuple[np.ndarray, np.ndarray]:
    """Likelihood per row through the eval path (time grid, daily refits, the detector, with
    ``changes`` to its configuration or the forecaster's), and the alert onsets (rows where the likelihood reaches
    the threshold after a row below it)."""
    from forewarn.eval_nab import replay_stream, split_changes

    stamps = pd.Series(pd.to_datetime(g.stamps, unit="s", utc=True))
    likelihood = replay_stream(stamps, g.values, cfg, counts=counts, changes=changes).likelihood
    cfg = replace(cfg or DetectorConfig(), **split_changes(changes)[0])
    alert = likelihood >= cfg.threshold
    onsets = np.flatnonzero(alert & ~np.r_[False, alert[:-1]])
    return likelihood, onsets


def false_alarms(g: Generated, onsets: np.ndarray) -> int:
    """Alert onsets outside the injected anomaly (and after ``ignore_before``)."""
    out = onsets[onsets >= g.ignore_before]
    if g.anomaly is not None:
        out = out[(out < g.anomaly[0]) | (out >= g.anomaly[1])]
    return int(out.size)


def detected_within(g: Generated, onsets: np.ndarray, likelihood: np.ndarray, threshold: float, buckets: int = 3) -> bool:
    """An alert from the anomaly's first row to ``buckets`` rows after the one from which it is
    detectable (for a slow drift, an alert while it is still small counts: it is earlier)."""
    return bool((likelihood[g.anomaly[0] : g.detectable + buckets] >= threshold).any())


def delay(g: Generated, likelihood: np.ndarray, threshold: float) -> int | None:
    """Buckets from where the anomaly is detectable to its first alert (negative: before it), or
    None if it is never alerted."""
    after = np.flatnonzero(likelihood[g.anomaly[0] :] >= threshold)
    return int(after[0]) + g.anomaly[0] - g.detectable if after.size else None


def _young(kind: str, seed: int) -> Generated:
    """A spike (10 noise sd, one bucket) or a lasting level shift (6 noise sd) in a clean young or
    coarse series (``YOUNG_ANOMALIES``), at a random bucket of the given day."""
    base, day, sd = YOUNG_ANOMALIES[kind]
    g = clean(base, seed)
    per_day = 86400 // g.grain
    a = day * per_day + int(np.random.default_rng(20_000 + seed).integers(0, per_day))
    y = g.values.copy()
    if kind.endswith("_spike"):
        y[a] += 10 * sd
        span = (a, a + 1)
    else:
        y[a:] += 6 * sd
        span = (a, y.size)
    return replace(g, shape=kind, values=y, anomaly=span, detectable=a)
