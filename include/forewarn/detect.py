"""Deviation scores: how unlikely an actual is under its forecast, judged against what this
series has done before, as an anomaly likelihood in [0, 1] comparable across series of any
scale. Pure numpy; the comparison DAG, the demo and the NAB evaluation share it.

For each bucket:

1. **Standardised deviation** ``z``: the actual's distance from the point forecast in units of
   the forecast's own spread on that side (the 95% band's half-width / 1.96).
2. **Surprise**: how rare ``|z|`` is among this series' past deviations — ``-log`` of its
   empirical exceedance probability — plus, beyond the largest past deviation, how much rarer
   still it is under a generalised Pareto tail fitted to the largest ones (peaks over
   threshold), plus how far the actual lies outside every value the series has ever shown. A
   score that means the same on every series, so one threshold serves them all. For counts, a
   run of buckets short of the expected rate is also judged as Poisson counts.
3. **One episode, one alert**: a surprise that does not beat the recent ones is damped, so a
   persisting deviation raises one alert, not one per bucket.
4. **Likelihood** ``surprise / (surprise + scale)``: monotone, in [0, 1), never saturating to
   exactly 1 (ties at the top would make rankings meaningless).

Buckets before ``min_history`` past deviations exist (cold start) score 0 and say so.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import poisson

Z95 = 1.959963984540054
#: Bounds that keep every number the detector holds or returns finite whatever it is given: a
#: surprise beyond ``MAX_SURPRISE`` (likelihood 0.999994 at the default scale) changes no
#: verdict, and a deviation beyond ``MAX_DEVIATION`` spreads is as anomalous as any.
MAX_SURPRISE = 1e6
MAX_DEVIATION = 1e150


@dataclass(frozen=True)
class DetectorConfig:
    #: Past deviations needed before a bucket can be judged (cold start before).
    min_history: int = 288
    #: How many recent deviations a bucket is judged against.
    memory: int = 500
    #: Buckets whose surprise a new one must beat to count in full (one episode, one alert).
    episode: int = 288
    #: Factor applied to a surprise that does not beat the episode's.
    repeat_damping: float = 0.3
    #: Recent buckets whose mean error corrects the forecast's level (the second view).
    correction_window: int = 12
    #: Buckets whose standardised deviations are pooled in the third view (a sustained
    #: moderate deviation; 0 turns the view off).
    persistence: int = 3
    #: For counts: the surprise (``-log`` Poisson probability) at which a run of buckets short of
    #: the expected rate is anomalous in itself; for a run of empty buckets, the events the
    #: rate's lower bound expected over it. At 16, Poisson counts at the expected rate (3, 10
    #: or 50 per bucket) never reached it in a million buckets each; at 10 they did 50-180
    #: times (runs short of the rate are selected ones): ``benchmarks/shortfall_null.py``.
    shortfall_surprise: float = 16.0
    #: Weight of a value beyond the series' whole range: a surprise of ``novelty_weight *
    #: log1p(excess / range)`` is added to every view, so a value about a quarter of its range
    #: beyond everything the series has shown is anomalous on its own.
    novelty_weight: float = 40.0
    #: Values seen before a new record counts as novel (early on, records are common: after n
    #: values the next one sets one with probability about 2/n).
    novelty_after: int = 288
    #: Share of the remembered deviations whose excesses over their threshold fit the
    #: generalised Pareto tail that prices a deviation beyond the largest one (0: only the
    #: heavy log-ratio tail).
    tail_fraction: float = 0.1
    #: Surprise that maps to likelihood 0.5.
    scale: float = 6.0
    #: Likelihood at or above which a bucket is anomalous: the NAB standard-profile optimum
    #: on its development subset (0.6225, the same for all three profiles); one threshold for
    #: every series.
    threshold: float = 0.6225


@dataclass
class View:
    """One way of looking at the deviations: its recent ones (sorted, and in arrival order) and
    the surprises of the current episode."""

    sorted_devs: list[float] = field(default_factory=list)
    arrivals: deque = field(default_factory=deque)
    surprises: deque = field(default_factory=deque)

    def judge(self, s: float, novelty: float, cfg: DetectorConfig) -> float | None:
        """Surprise of deviation ``s`` (None during cold start), then remember ``s``."""
        n = len(self.sorted_devs)
        surprise = None
        if n >= min(cfg.min_history, cfg.memory):
            exceed = n - bisect.bisect_left(self.sorted_devs, s)
            raw = -math.log((exceed + 1) / (n + 1))
            top = self.sorted_devs[-1]
            if s > top:
                raw += max(math.log1p(s / max(top, 1e-12) - 1), tail_excess(self.sorted_devs, s, cfg.tail_fraction))
            raw = min(raw + novelty, MAX_SURPRISE)
            surprise = raw if not self.surprises or raw > max(self.surprises) else raw * cfg.repeat_damping
            self.surprises.append(raw)
            if len(self.surprises) > cfg.episode:
                self.surprises.popleft()
        bisect.insort(self.sorted_devs, s)
        self.arrivals.append(s)
        if len(self.arrivals) > cfg.memory:
            old = self.arrivals.popleft()
            del self.sorted_devs[bisect.bisect_left(self.sorted_devs, old)]
        return surprise


def tail_excess(sorted_devs: list[float], s: float, fraction: float) -> float:
    """``-log`` of how much rarer ``s`` is than the largest remembered deviation, under a
    generalised Pareto tail fitted (method of moments) to the excesses of the top ``fraction``
    of them over the next one: peaks over threshold. A light tail (a series whose deviations
    stay near their usual size) makes a new record very surprising; a heavy one, barely. The
    shape is kept in [0, 0.9]: no finite end point is assumed, and an infinite mean is not."""
    n = len(sorted_devs)
    k = int(n * fraction)
    if k < 25:  # too few to say how the tail falls
        return 0.0
    u = sorted_devs[n - k - 1]
    excess = np.asarray(sorted_devs[n - k :]) - u
    m, v = float(excess.mean()), float(excess.var())
    if m <= 0 or v <= 0:
        return 0.0
    xi = min(max(0.5 * (1 - m * m / v), 0.0), 0.9)
    sigma = m * (1 - xi)
    top = sorted_devs[-1]
    if xi < 1e-6:
        return (s - top) / sigma
    return math.log1p(xi * (s - u) / sigma) / xi - math.log1p(xi * (top - u) / sigma) / xi


@dataclass
class SeriesState:
    """What the detector remembers of one series between calls (kept per series by the DAG)."""

    forecast_view: View = field(default_factory=View)
    corrected_view: View = field(default_factory=View)
    sustained_view: View = field(default_factory=View)
    errors: deque = field(default_factory=deque)  # recent actual - forecast
    recent_z: deque = field(default_factory=deque)  # recent error-corrected standardised deviations
    shortfall: deque = field(default_factory=deque)  # (rate's lower bound, events seen) over the current run short of it
    low: float = math.inf
    high: float = -math.inf
    seen: int = 0
    scored: int = 0


def rate_lower(mean: float, lower95: float) -> float:
    """Lower 95% bound of a count's *rate*: the band's variance below the mean, less the Poisson
    variance of counting (the mean), is what is uncertain about the rate itself."""
    if not mean > 0:
        return 0.0
    sigma = max(mean - lower95, 0.0) / Z95
    return max(mean - Z95 * math.sqrt(max(sigma * sigma - mean, 0.0)), 0.0)


def shortfall_surprise(run: deque | list) -> float:
    """The most surprising stretch of a run of buckets short of the expected rate that ends now:
    the largest ``-log P(N <= seen)``, ``N ~ Poisson(expected)``, over the run's suffixes (an
    early bucket only slightly short must not dilute the empty ones after it)."""
    pairs = np.asarray(run, dtype=float)[::-1]
    expected, seen = np.cumsum(pairs[:, 0]), np.maximum(np.floor(np.cumsum(pairs[:, 1])), 0.0)
    log_cdf = poisson.logcdf(seen, expected)
    under = ~np.isfinite(log_cdf)
    if under.any():  # the CDF underflowed (a long, deep shortfall): P(N <= k) <= pmf(k) / (1 - k/expected)
        k, lam = seen[under], expected[under]
        log_cdf[under] = poisson.logpmf(k, lam) - np.log1p(-np.minimum(k / lam, 1 - 1e-12))
    return float(min(-log_cdf.min(), MAX_SURPRISE))


def standardised(actual: np.ndarray, mean: np.ndarray, lower95: np.ndarray, upper95: np.ndarray) -> np.ndarray:
    """Signed deviation in units of the forecast's spread on the actual's side of the mean."""
    above = actual >= mean
    half = np.where(above, upper95 - mean, mean - lower95)
    spread = np.maximum(half / Z95, 1e-9 * np.maximum(np.abs(mean), 1.0))
    return (actual - mean) / spread


def _standardised_one(actual: float, mean: float, lower95: float, upper95: float) -> float:
    """``standardised`` for one bucket, in plain floats (the same IEEE arithmetic, without
    numpy's per-call cost in the per-bucket loop)."""
    half = upper95 - mean if actual >= mean else mean - lower95
    return (actual - mean) / max(half / Z95, 1e-9 * max(abs(mean), 1.0))


def score(
    actual: np.ndarray,
    mean: np.ndarray,
    lower95: np.ndarray,
    upper95: np.ndarray,
    state: SeriesState | None = None,
    cfg: DetectorConfig | None = None,
    counts: bool = False,
) -> tuple[np.ndarray, np.ndarray, SeriesState]:
    """Likelihoods and standardised deviations for consecutive buckets of one series, updating
    (and returning) its state. A bucket without an actual or a forecast scores 0 and leaves the
    state as it was.

    Three views are judged, each against its own history: the deviation from the forecast; from
    the forecast corrected by the errors of the last ``correction_window`` buckets (their sum over
    the window, so a correction grows in as errors become known; it follows a level the forecast
    missed, so what is new stands out); and the corrected deviations of the last ``persistence``
    buckets pooled (a moderate deviation that lasts). The likelihood is the largest of the three.
    With ``counts``, a run of buckets below the lower bound of the expected *rate* (the band with
    the Poisson noise of counting taken out, see ``rate_lower``) is judged as counts: ``-log P(N
    <= seen)`` for ``N ~ Poisson(expected)`` over its most surprising stretch; at
    ``shortfall_surprise`` or more it is anomalous in itself. A drop or a silence where few events
    are expected per bucket adds up over buckets this way, where each bucket alone is within the
    noise."""
    cfg = cfg or DetectorConfig()
    state = state or SeriesState()
    actual = np.asarray(actual, dtype=float)
    z = np.clip(standardised(actual, mean, lower95, upper95), -MAX_DEVIATION, MAX_DEVIATION)
    out = np.zeros(actual.size)
    for i in range(actual.size):
        y = actual[i]
        if not (np.isfinite(y) and np.isfinite(z[i])):
            continue
        span = state.high - state.low
        novelty = min(cfg.novelty_weight * math.log1p(max(y - state.high, state.low - y, 0.0) / span), MAX_SURPRISE) \
            if span > 0 and state.seen >= cfg.novelty_after else 0.0
        shift = sum(state.errors) / max(cfg.correction_window, 1)  # fewer errors known: a smaller correction
        z_corr = min(max(_standardised_one(y, float(mean[i]) + shift, float(lower95[i]) + shift, float(upper95[i]) + shift),
                         -MAX_DEVIATION), MAX_DEVIATION)
        first = state.forecast_view.judge(abs(float(z[i])), novelty, cfg)
        second = state.corrected_view.judge(abs(float(z_corr)), novelty, cfg)
        third = None
        if cfg.persistence:
            state.recent_z.append(float(z_corr))
            if len(state.recent_z) > cfg.persistence:
                state.recent_z.popleft()
            if len(state.recent_z) == cfg.persistence:
                pooled = abs(sum(state.recent_z)) / math.sqrt(cfg.persistence)
                third = state.sustained_view.judge(pooled, novelty, cfg)
        counted = None
        if counts:
            rate = rate_lower(float(mean[i]), float(lower95[i]))
            if y < rate:
                state.shortfall.append((rate, y))
                if len(state.shortfall) > cfg.episode:  # a shortfall is judged over at most an episode's span
                    state.shortfall.popleft()
                shortfall = shortfall_surprise(state.shortfall)
                if shortfall >= cfg.shortfall_surprise and first is not None:
                    counted = shortfall
            else:
                state.shortfall.clear()
        surprise = min(max(s for s in (first, second, third, counted, 0.0) if s is not None), MAX_SURPRISE)
        if first is not None:
            state.scored += 1
            out[i] = surprise / (surprise + cfg.scale)
        state.errors.append(min(max(y - float(mean[i]), -MAX_DEVIATION), MAX_DEVIATION))
        if len(state.errors) > cfg.correction_window:
            state.errors.popleft()
        state.low, state.high = min(state.low, y), max(state.high, y)
        state.seen += 1
    return out, z, state


def warm(actual: np.ndarray, mean: np.ndarray, lower95: np.ndarray, upper95: np.ndarray, cfg: DetectorConfig | None = None,
         counts: bool = False) -> SeriesState:
    """The state ``score`` leaves after these buckets (its episode surprises emptied), replaying
    only the buckets the state can still remember: the last ``memory`` deviations of each view,
    the buckets their corrections and pooling look back over, and a shortfall's longest run. The
    rest only widen the range of values seen and count, so they are summed up without the loop;
    the state is the same as a full replay's (tested), at a fraction of the time."""
    cfg = cfg or DetectorConfig()
    actual = np.asarray(actual, dtype=float)
    mean, lower95, upper95 = (np.asarray(a, dtype=float) for a in (mean, lower95, upper95))
    usable = np.flatnonzero(np.isfinite(actual) & np.isfinite(standardised(actual, mean, lower95, upper95)))
    keep = cfg.memory + cfg.correction_window + cfg.persistence + cfg.episode
    state = SeriesState()
    cut = usable[-keep] if usable.size > keep else 0
    early = actual[usable[usable < cut]]
    if early.size:
        state.low, state.high, state.seen = float(early.min()), float(early.max()), int(early.size)
    score(actual[cut:], mean[cut:], lower95[cut:], upper95[cut:], state, cfg, counts=counts)
    state.scored = max(0, int(usable.size) - min(cfg.min_history, cfg.memory))
    for view in (state.forecast_view, state.corrected_view, state.sustained_view):
        view.surprises.clear()
    return state
