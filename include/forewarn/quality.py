"""Model-quality monitoring: is each series' forecast still as good as training said it was?

Per series and metric the comparison keeps, in the detector's memory, the last day of buckets
it judged (``DetectorConfig.quality_window``; anomalous buckets left out, since an incident
already speaks of them) and two figures over them:

- **coverage**: the share of actuals inside the forecast's 95% band (95% when the model is as
  good as its validation);
- **error ratio**: the mean standardised deviation ``|z|`` (the distance from the point forecast
  in units of the band's spread, which the training run calibrated on its out-of-sample
  backtest) over the ``|z|`` a calibrated forecast has on average (``E|N(0,1)| = 0.798``): 1 when
  the error is what validation measured, 2 when it doubled. A single ``|z|`` counts at most
  ``MAX_Z`` so one wild bucket does not make a day.

Once a whole day has been counted, coverage below ``COVERAGE_ALERT`` (85%) or an error ratio
above ``ERROR_ALERT`` (2) opens a model-quality alert of its own for that series and metric,
routed like its incidents; it resolves once coverage is back to ``COVERAGE_OK`` and the error
ratio to ``ERROR_OK`` (a margin, so an alert does not flap at the line).
"""

from __future__ import annotations

import math
import warnings
from datetime import UTC, datetime
from typing import Any

import numpy as np

from forewarn.publish import Incident

MEAN_ABS_Z = math.sqrt(2 / math.pi)  # E|N(0, 1)|
MAX_Z = 10.0
COVERAGE_ALERT, COVERAGE_OK = 0.85, 0.90
ERROR_ALERT, ERROR_OK = 2.0, 1.5
#: The episode ids of model-quality alerts carry this, so the registry tells them from anomalies.
MARK = "|model-quality:"


def update(memory: Any, rows: np.ndarray, actual: np.ndarray, lower: np.ndarray, upper: np.ndarray, z: np.ndarray,
           anomalous: np.ndarray) -> None:
    """Add ``(k, T)`` judged buckets (row ``i`` is ``memory`` row ``rows[i]``) to the rolling
    window, in time order. Buckets without an actual or a forecast, and anomalous ones, are not
    counted."""
    width = memory.q_inside.shape[1]
    use = np.isfinite(actual) & np.isfinite(lower) & np.isfinite(upper) & np.isfinite(z) & (anomalous == 0)
    inside = ((actual >= lower) & (actual <= upper)).astype(np.float32)
    ratio = (np.minimum(np.abs(np.nan_to_num(z)), MAX_Z) / MEAN_ABS_Z).astype(np.float32)
    for t in range(actual.shape[1]):
        k = np.flatnonzero(use[:, t])
        if not k.size:
            continue
        r = rows[k]
        slot = memory.q_pos[r] % width
        memory.q_inside[r, slot], memory.q_error[r, slot] = inside[k, t], ratio[k, t]
        memory.q_pos[r] += 1


def rolling(memory: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: whether a whole window has been counted, the window's coverage and error ratio."""
    full = memory.q_pos >= memory.q_inside.shape[1]
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an empty window's mean: NaN, and not full anyway
        return full, np.nanmean(memory.q_inside, axis=1), np.nanmean(memory.q_error, axis=1)


def track(memory: Any, names: list[str], at: datetime) -> list[tuple[str, Incident]]:
    """Open or resolve the model-quality alerts the rolling figures call for (the alert's
    start, epoch seconds, kept in ``memory.q_since``; 0: none). Returns the actions."""
    full, coverage, error = rolling(memory)
    bad = full & ((coverage < COVERAGE_ALERT) | (error > ERROR_ALERT))
    good = ~full | ((coverage >= COVERAGE_OK) & (error <= ERROR_OK))
    actions = []
    for i in np.flatnonzero(bad & (memory.q_since == 0)):
        memory.q_since[i] = at.timestamp()
        actions.append(("open", incident(names[i], float(memory.q_since[i]), float(coverage[i]), float(error[i]))))
    for i in np.flatnonzero(good & (memory.q_since > 0)):
        done = incident(names[i], float(memory.q_since[i]), float(coverage[i]), float(error[i]))
        done.ended = at
        memory.q_since[i] = 0.0
        actions.append(("resolve", done))
    return actions


def incident(name: str, since_epoch: float, coverage: float, error: float) -> Incident:
    """The model-quality alert of ``name`` (``series|metric``), open since ``since_epoch``."""
    series, metric = name.split("|", 1)
    since = datetime.fromtimestamp(since_epoch, UTC)
    says = []
    if coverage < COVERAGE_ALERT:
        says.append(f"its 95% band held {coverage:.1%} of the last day's actuals (at least {COVERAGE_ALERT:.0%} expected)")
    if error > ERROR_ALERT:
        says.append(f"its error is {error:.1f} times what validation measured")
    headline = (f"the forecast of {series} {metric} has degraded since {since:%Y-%m-%d %H:%M} UTC: "
                + ("; ".join(says) or f"coverage {coverage:.0%}, error {error:.1f}x validation (recovered)")
                + ". Retrain, or check what changed in the series")
    fact = {"metric": f"{metric}:forecast_quality", "direction": "below", "since": since.isoformat(), "actual": round(coverage, 4),
            "expected": 0.95, "lower_95": COVERAGE_ALERT, "upper_95": 1.0, "likelihood": 1.0, "error_ratio": round(error, 3)}
    return Incident(episode=f"{series}{MARK}{metric}|{since:%Y-%m-%dT%H:%M}", series=series, metric=f"{metric}:forecast_quality",
                    started=since, direction="below", actual=round(coverage, 4), expected=0.95, lower=COVERAGE_ALERT, upper=1.0,
                    likelihood=1.0, impact=3, evidence_uri="", headline=headline, deviations=[fact])


def figures(memory: Any, names: list[str]) -> dict[str, Any]:
    """What the run summary and the page say: the series-metrics with a whole window counted,
    how many are degraded now, and the lowest coverages."""
    full, coverage, error = rolling(memory)
    known = np.flatnonzero(full)
    degraded = [names[i] for i in np.flatnonzero(memory.q_since > 0)]
    worst = sorted(known, key=lambda i: float(coverage[i]))[:5]
    return {"measured": int(known.size), "degraded": len(degraded), "degraded_series": degraded[:50],
            "lowest_coverage": {names[i]: round(float(coverage[i]), 3) for i in worst},
            "highest_error_ratio": round(float(error[known].max()), 3) if known.size else None}
