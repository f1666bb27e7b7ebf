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

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

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
    #: For counts: the surprise (``-log`` Poisson probability) at which a run of buckets short of
    #: the expected rate is anomalous in itself; for a run of empty buckets, the events the
    #: rate's lower bound expected over it. At 16, Poisson counts at the expected rate (3, 10
    #: or 50 per bucket) never reached it in a million buckets each; at 10 they did 50-180
    #: times (runs short of the rate are selected ones): ``benchmarks/shortfall_null.py``.
    shortfall_surprise: float = 16.0
    #: The excursion view: each judged bucket adds the rarity of its deviation from the forecast
    #: (``-log`` of its rank among the remembered ones, about 1 on average) less this reference to
    #: a running sum that never goes below 0 (a CUSUM); a run of deviations that are each only
    #: somewhat rare (a slow drift, wider noise) adds up, and is judged against the peaks of this
    #: series' past excursions. Chosen by leave-one-category-out among 2, 2.5, 3, 3.5 and 4 (every
    #: fold chose 3); 0 turns the view off.
    excursion_reference: float = 3.0
    #: Past excursions needed before the excursion view judges (fewer: it stays silent). Held
    #: out, 5 scored 66.70 and 10 69.21.
    excursion_min: int = 10
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
    #: Buckets over which the forecast's quality (coverage, error) is judged: a day
    #: (``forewarn.quality``; the comparison sets it from the grain).
    quality_window: int = 288
    #: Surprise that maps to likelihood 0.5.
    scale: float = 6.0
    #: Likelihood at or above which a bucket is anomalous; one threshold for every series. The
    #: NAB standard-profile optimum on its development subset among the thresholds within the
    #: false-alarm budget (``nab_cv.BUDGET_THRESHOLD``: at least 0.615). By NAB's own rule, with
    #: no budget, the optima are 0.5920 (standard and reward-low-FN) and 0.6223 (reward-low-FP).
    threshold: float = 0.6222


#: The least shape given to the fitted tail of a series whose deviations are heavier-tailed than
#: an exponential's (``tail_excess``).
HEAVY_TAIL_SHAPE = 0.2


def tail_excess(sorted_devs: list[float], s: float, fraction: float) -> float:
    """``-log`` of how much rarer ``s`` is than the largest remembered deviation, under a
    generalised Pareto tail fitted (method of moments) to the excesses of the top ``fraction``
    of them over the next one: peaks over threshold. A light tail (a series whose deviations
    stay near their usual size) makes a new record very surprising; a heavy one, barely. The
    shape is kept in [0, 0.9]: no finite end point is assumed, and an infinite mean is not.

    Moments cannot see a shape above 0.25 (the fourth moment is infinite there) and read such a
    tail as a light one, so on Student-t noise a record was priced as near impossible (1.23
    alerts a series-week on clean t(3) noise). The quantiles can: where the 99th percentile of
    the deviations is more than twice their 90th (an exponential's ratio is exactly 2, a
    normal's 1.57, a t(3)'s 2.48), the tail is heavier than exponential and its shape is at
    least ``HEAVY_TAIL_SHAPE``. The percentiles are the 5th and 51st largest of 500 (the 1% and
    10% of however many are remembered): up to four remembered anomalous buckets leave the 99th
    among the noise, though on normal noise whose own 5th largest is high the ratio then passes 2
    a third of the time; five or more pass it, and then the moments too read the tail as heavy
    (their shape about 0.36). Measured (``benchmarks/README.md``, "The deviations'
    tail"): t(3) noise 0.84 alerts a series-week (1.23 without), flat steps 0.39 (0.88); NAB held
    out 70.70 with each fold's threshold within the false-alarm budget, development 65.86 at
    0.6222. Without it the budget needs a threshold of about 0.64, where they are 68.17 and 61.29."""
    n = len(sorted_devs)
    k = int(n * fraction)
    if k < 25:  # too few to say how the tail falls
        return 0.0
    u = sorted_devs[n - k - 1]
    excess = np.asarray(sorted_devs[n - k :]) - u
    q90, q99 = sorted_devs[n - n // 10 - 1], sorted_devs[n - max(round(n / 100), 1)]  # q90 is u at the default fraction
    shape_min = HEAVY_TAIL_SHAPE if q90 > 0 and q99 > 2.0 * q90 else 0.0
    return float(gpd_gap(np.float64(excess.mean()), np.float64(excess.var()), np.float64(s - u), np.float64(sorted_devs[-1] - u),
                         shape_min))


def gpd_gap(m: np.ndarray, v: np.ndarray, s: np.ndarray, top: np.ndarray, shape_min: float = 0.0) -> np.ndarray:
    """``-log`` of how much rarer an excess ``s`` is than ``top`` under a generalised Pareto law
    fitted by the method of moments to excesses of mean ``m`` and variance ``v`` (0 where they
    say nothing). The shape is kept in [``shape_min``, 0.9]: no finite end point is assumed, and
    an infinite mean is not (the scale follows the shape, so the mean excess stays ``m``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        xi = np.clip(0.5 * (1 - m * m / v), shape_min, 0.9)
        sigma = m * (1 - xi)
        safe = np.maximum(xi, 1e-6)
        out = np.where(xi < 1e-6, (s - top) / sigma, np.log1p(safe * s / sigma) / safe - np.log1p(safe * top / sigma) / safe)
    return np.where((m > 0) & (v > 0) & np.isfinite(out), out, 0.0)


def rate_lower(mean: float | np.ndarray, lower95: float | np.ndarray) -> float | np.ndarray:
    """Lower 95% bound of a count's *rate*: the band's variance below the mean, less the Poisson
    variance of counting (the mean), is what is uncertain about the rate itself."""
    m, lo = np.asarray(mean, dtype=float), np.asarray(lower95, dtype=float)
    with np.errstate(invalid="ignore"):
        sigma = np.maximum(m - lo, 0.0) / Z95
        out = np.where(m > 0, np.maximum(m - Z95 * np.sqrt(np.maximum(sigma * sigma - m, 0.0)), 0.0), 0.0)
    return float(out) if out.ndim == 0 else out


def shortfall_surprise(run: Sequence) -> float:
    """The most surprising stretch of a run of (expected rate, events seen) pairs, oldest first,
    that ends now: see ``shortfall_surprises``."""
    pairs = np.asarray(run, dtype=float).reshape(1, -1, 2)[:, ::-1]
    return float(shortfall_surprises(pairs[..., 0], pairs[..., 1], np.full(1, pairs.shape[1]))[0])


def shortfall_surprises(rate: np.ndarray, seen: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Per row, the largest ``-log P(N <= events)``, ``N ~ Poisson(expected)``, over the suffixes
    of a run of buckets short of the expected rate that ends now (an early bucket only slightly
    short must not dilute the empty ones after it). ``rate`` and ``seen`` are ``(rows, L)``,
    most recent bucket first; only the first ``length`` of each row belong to its run."""
    valid = np.arange(rate.shape[1])[None, :] < length[:, None]
    expected = np.cumsum(np.where(valid, rate, 0.0), axis=1)
    events = np.maximum(np.floor(np.cumsum(np.where(valid, seen, 0.0), axis=1)), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_cdf = poisson.logcdf(events, expected)
        under = valid & ~np.isfinite(log_cdf)
        if under.any():  # the CDF underflowed (a long, deep shortfall): P(N <= k) <= pmf(k) / (1 - k/expected)
            k, lam = events[under], expected[under]
            log_cdf[under] = poisson.logpmf(k, lam) - np.log1p(-np.minimum(k / lam, 1 - 1e-12))
    worst = np.where(valid, -log_cdf, -np.inf).max(axis=1, initial=-np.inf)
    return np.minimum(np.maximum(worst, 0.0), MAX_SURPRISE)


def standardised(actual: np.ndarray, mean: np.ndarray, lower95: np.ndarray, upper95: np.ndarray) -> np.ndarray:
    """Signed deviation in units of the forecast's spread on the actual's side of the mean."""
    above = actual >= mean
    half = np.where(above, upper95 - mean, mean - lower95)
    spread = np.maximum(half / Z95, 1e-9 * np.maximum(np.abs(mean), 1.0))
    return (actual - mean) / spread


#: The views of the deviations each judged against its own history: the deviation from the
#: forecast, and from the forecast corrected by its recent errors.
VIEWS = 2
_EMPTY = -np.inf


@dataclass
class Memory:
    """What the detector remembers of ``n`` series (row ``i``: one series and metric) between
    calls, as fixed-size arrays (ring buffers), so one interval of thousands of series is judged
    in a few vectorised steps and persisted as a few arrays. Sizes follow ``DetectorConfig``:
    per row, ``memory`` recent |deviations| of each view, ``episode`` recent surprises of each,
    ``correction_window`` recent errors and, for counts, the current run of buckets short of the
    expected rate (at most ``episode``). float32 where a value is a deviation or surprise (a
    ranking and a comparison, which float32 holds), float64 where arithmetic adds up."""

    devs: np.ndarray  # (n, views, memory) float32 |deviation|, -inf = empty; slot = dev_pos % memory
    dev_pos: np.ndarray  # (n,) int64 deviations ever remembered
    surprises: np.ndarray  # (n, views, episode) float32 raw surprises of the current episode, -inf = empty
    sur_pos: np.ndarray  # (n,) int64
    errors: np.ndarray  # (n, correction_window) float64 recent actual - forecast, 0 = empty
    err_pos: np.ndarray  # (n,) int64
    run_rate: np.ndarray  # (n, episode) float64 the run short of the rate: its rate's lower bound...
    run_seen: np.ndarray  # (n, episode) float64 ...and the events seen; slot = run_pos % episode
    run_len: np.ndarray  # (n,) int64 buckets in the current run (<= episode)
    run_pos: np.ndarray  # (n,) int64
    low: np.ndarray  # (n,) float64 smallest value seen (inf before any)
    high: np.ndarray  # (n,) float64 largest (-inf before any)
    seen: np.ndarray  # (n,) int64 values seen
    scored: np.ndarray  # (n,) int64 buckets judged (0: still in cold start)
    # the forecast's rolling quality (``forewarn.quality``): the last ``quality_window`` buckets
    # counted, each inside the 95% band or not and its error ratio (NaN = empty; slot = q_pos %
    # window), and since when an alert on it is open (epoch seconds; 0: none)
    q_inside: np.ndarray  # (n, quality_window) float32
    q_error: np.ndarray  # (n, quality_window) float32
    q_pos: np.ndarray  # (n,) int64
    q_since: np.ndarray  # (n,) float64
    # the excursion view: the running sum of rarity, the current excursion's peak and whether it
    # has alerted, and the peaks of past excursions with the deviation count at which each ended
    # (0 = empty; slot = exc_pos % excursion_slots(cfg))
    exc_sum: np.ndarray  # (n,) float64
    exc_peak: np.ndarray  # (n,) float64
    exc_fired: np.ndarray  # (n,) bool
    exc_peaks: np.ndarray  # (n, excursion_slots) float32
    exc_ends: np.ndarray  # (n, excursion_slots) int64
    exc_pos: np.ndarray  # (n,) int64

    @classmethod
    def empty(cls, n: int = 1, cfg: DetectorConfig | None = None) -> Memory:
        cfg = cfg or DetectorConfig()
        w, e, q, h = max(cfg.correction_window, 1), max(cfg.episode, 1), max(cfg.quality_window, 1), excursion_slots(cfg)
        zeros = np.zeros(n, dtype=np.int64)
        return cls(devs=np.full((n, VIEWS, cfg.memory), _EMPTY, np.float32), dev_pos=zeros.copy(),
                   surprises=np.full((n, VIEWS, e), _EMPTY, np.float32), sur_pos=zeros.copy(),
                   errors=np.zeros((n, w)), err_pos=zeros.copy(), run_rate=np.zeros((n, e)), run_seen=np.zeros((n, e)),
                   run_len=zeros.copy(), run_pos=zeros.copy(), low=np.full(n, np.inf), high=np.full(n, -np.inf),
                   seen=zeros.copy(), scored=zeros.copy(), q_inside=np.full((n, q), np.nan, np.float32),
                   q_error=np.full((n, q), np.nan, np.float32), q_pos=zeros.copy(), q_since=np.zeros(n),
                   exc_sum=np.zeros(n), exc_peak=np.zeros(n), exc_fired=np.zeros(n, bool), exc_peaks=np.zeros((n, h), np.float32),
                   exc_ends=np.zeros((n, h), np.int64), exc_pos=zeros.copy())

    def __len__(self) -> int:
        return int(self.seen.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def take(self, rows: np.ndarray | list[int]) -> Memory:
        rows = np.asarray(rows, dtype=np.int64)
        return Memory(**{name: a[rows] for name, a in self.arrays().items()})

    @classmethod
    def concat(cls, parts: list[Memory], cfg: DetectorConfig | None = None) -> Memory:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty(0, cfg)
        return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)})

    def fits(self, cfg: DetectorConfig) -> bool:
        return self.devs.shape[1:] == (VIEWS, cfg.memory) and self.surprises.shape[2] == max(cfg.episode, 1) \
            and self.errors.shape[1] == max(cfg.correction_window, 1) and self.q_inside.shape[1] == max(cfg.quality_window, 1) \
            and self.exc_peaks.shape[1] == excursion_slots(cfg)

    def clear_surprises(self, rows: np.ndarray | slice = slice(None)) -> None:
        self.surprises[rows] = _EMPTY
        self.sur_pos[rows] = 0

    def forget_recent(self, rows: np.ndarray | slice = slice(None)) -> None:
        """Drop what only describes the last few buckets (the level correction, a count
        shortfall's run): after a gap it no longer does. What was learned stays."""
        self.errors[rows] = 0.0
        self.err_pos[rows] = 0
        self.run_len[rows] = 0
        self.run_pos[rows] = 0
        self.exc_sum[rows], self.exc_peak[rows], self.exc_fired[rows] = 0.0, 0.0, False  # an excursion under way

    def recent_errors(self, row: int) -> np.ndarray:
        """Row ``row``'s remembered errors, oldest first."""
        w = self.errors.shape[1]
        k = int(min(self.err_pos[row], w))
        return self.errors[row, (np.arange(int(self.err_pos[row]) - k, int(self.err_pos[row]))) % w]

    def run(self, row: int) -> list[tuple[float, float]]:
        """Row ``row``'s run short of the rate, oldest first: (rate's lower bound, events seen)."""
        e = self.run_rate.shape[1]
        idx = np.arange(int(self.run_pos[row]) - int(self.run_len[row]), int(self.run_pos[row])) % e
        return list(zip(self.run_rate[row, idx].tolist(), self.run_seen[row, idx].tolist(), strict=True))

    def deviations(self, row: int, view: int = 0) -> np.ndarray:
        """Row ``row``'s remembered deviations of ``view``, sorted."""
        d = self.devs[row, view]
        return np.sort(d[np.isfinite(d)]).astype(float)


def alert_surprise(cfg: DetectorConfig, threshold: float | np.ndarray | None = None) -> float | np.ndarray:
    """The surprise whose likelihood is ``threshold`` (default: the configuration's)."""
    t = cfg.threshold if threshold is None else np.minimum(np.asarray(threshold, dtype=float), 1 - 1e-12)
    return cfg.scale * t / (1 - t)


def excursion_slots(cfg: DetectorConfig) -> int:
    """Past excursion peaks remembered: about twice as many as end within ``memory`` buckets on
    ordinary series, and never too few for the view to judge."""
    return max(cfg.memory // 8, 2 * cfg.excursion_min, 1)


def _f32(deviations: np.ndarray) -> np.ndarray:
    """|deviations| as float32, the largest beyond its range kept at its largest (a tie)."""
    return np.minimum(np.abs(deviations), np.finfo(np.float32).max).astype(np.float32)


def peaks_beyond(peaks: np.ndarray, live: np.ndarray, s: np.ndarray, top: np.ndarray) -> np.ndarray:
    """Per row, ``-log`` of how much rarer an excursion reaching ``s`` is than one reaching
    ``top`` (the highest of the ``live`` past peaks), under a generalised Pareto law fitted
    (method of moments) to those peaks: an excursion's peak is itself an excess over 0."""
    count = np.maximum(live.sum(axis=1), 1)
    m = np.where(live, peaks, 0.0).sum(axis=1) / count
    v = np.where(live, (peaks - m[:, None]) ** 2, 0.0).sum(axis=1) / count
    return gpd_gap(m, v, s, top)


def excursion_step(state: Memory, rows: np.ndarray, rarity: np.ndarray, kept: np.ndarray, cfg: DetectorConfig,
                   others: np.ndarray, alert: float | np.ndarray | None = None) -> np.ndarray:
    """The excursion view's surprise for one judged bucket of each of ``rows``, updating their
    memory. The running sum of ``rarity`` less ``excursion_reference`` (never below 0) is
    judged, while above 0, against the peaks of this series' excursions that ended within the
    remembered deviations: the rarer its height among them per remembered bucket, the more
    surprising, and beyond the highest by a generalised Pareto law fitted to them. An
    excursion's own buckets are never its reference (its peak is remembered when it ends), so a
    slow drift is judged against the series as it was. One excursion, one alert: once a
    bucket's surprise (this view's or ``others``, the two deviation views') has reached
    ``alert`` (per row: the surprise at its alert threshold) while the excursion is under way,
    it adds nothing more until it ends."""
    clock = state.dev_pos[rows]
    before = state.exc_sum[rows]
    now = np.maximum(before + rarity - cfg.excursion_reference, 0.0)
    ended = (now == 0) & (before > 0)
    if ended.any():
        er = rows[ended]
        slot = state.exc_pos[er] % state.exc_peaks.shape[1]
        state.exc_peaks[er, slot], state.exc_ends[er, slot] = state.exc_peak[er], clock[ended]
        state.exc_pos[er] += 1
        state.exc_peak[er], state.exc_fired[er] = 0.0, False
    state.exc_sum[rows] = now
    state.exc_peak[rows] = np.maximum(state.exc_peak[rows], now)
    out = np.zeros(rows.size)
    active = now > 0
    if not active.any():
        return out
    ar, height, k = rows[active], now[active], kept[active]
    peaks = state.exc_peaks[ar].astype(float)
    live = (peaks > 0) & (state.exc_ends[ar] > (clock[active] - k)[:, None])
    top = np.where(live, peaks, 0.0).max(axis=1)
    surprise = -np.log(((live & (peaks >= height[:, None])).sum(axis=1) + 1) / (k + 1))
    beyond = height > top
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(beyond & (top > 0), np.log(height / np.where(top > 0, top, 1.0)), 0.0)
    surprise = surprise + np.where(beyond, np.maximum(ratio, peaks_beyond(peaks, live, height, top)), 0.0)
    surprise = np.where((live.sum(axis=1) >= cfg.excursion_min) & ~state.exc_fired[ar], surprise, 0.0)
    level = alert_surprise(cfg) if alert is None else np.broadcast_to(alert, rows.shape)[active]
    state.exc_fired[ar] |= np.maximum(surprise, others[active]) >= level
    out[active] = np.minimum(surprise, MAX_SURPRISE)
    return out


def score(
    actual: np.ndarray,
    mean: np.ndarray,
    lower95: np.ndarray,
    upper95: np.ndarray,
    state: Memory | None = None,
    cfg: DetectorConfig | None = None,
    counts: bool = False,
) -> tuple[np.ndarray, np.ndarray, Memory]:
    """Likelihoods and standardised deviations for consecutive buckets of one series, updating
    (and returning) its memory (``score_many`` for one row)."""
    cfg = cfg or DetectorConfig()
    state = Memory.empty(1, cfg) if state is None else state
    as_row = [np.asarray(a, dtype=float).reshape(1, -1) for a in (actual, mean, lower95, upper95)]
    likelihood, z = score_many(*as_row, state, cfg, np.array([counts]))
    return likelihood[0], z[0], state


def score_many(
    actual: np.ndarray,
    mean: np.ndarray,
    lower95: np.ndarray,
    upper95: np.ndarray,
    state: Memory,
    cfg: DetectorConfig,
    counts: np.ndarray | bool = False,
    thresholds: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Likelihoods and standardised deviations of ``(n, T)`` buckets (row ``i``: consecutive
    buckets of row ``i`` of ``state``), updating ``state``. A bucket without an actual or a
    forecast scores 0 and leaves its row as it was. Vectorised over rows, a step per bucket.

    Two views are judged, each against its own history: the deviation from the forecast, and
    from the forecast corrected by the errors of the last ``correction_window`` buckets (their
    sum over the window, so a correction grows in as errors become known; it follows a level the
    forecast missed, so what is new stands out). The likelihood is the larger of the two. For
    rows in ``counts``, a run of buckets below the lower bound of the expected *rate* (the band
    with the Poisson noise of counting taken out, see ``rate_lower``) is judged as counts: ``-log
    P(N <= seen)`` for ``N ~ Poisson(expected)`` over its most surprising stretch; at
    ``shortfall_surprise`` or more it is anomalous in itself. A drop or a silence where few
    events are expected per bucket adds up over buckets this way, where each bucket alone is
    within the noise. ``thresholds`` (per row, default the configuration's) are the likelihoods
    at which each row alerts: the excursion view's one alert per excursion counts from there."""
    if not state.fits(cfg):
        raise ValueError("the detector memory was built for other sizes than this DetectorConfig's")
    actual, mean, lower95, upper95 = (np.atleast_2d(np.asarray(a, dtype=float)) for a in (actual, mean, lower95, upper95))
    n, steps = actual.shape
    counts = np.broadcast_to(np.asarray(counts, dtype=bool), (n,))
    alert = np.broadcast_to(alert_surprise(cfg, cfg.threshold if thresholds is None else thresholds), (n,))
    with np.errstate(invalid="ignore"):
        z = np.clip(standardised(actual, mean, lower95, upper95), -MAX_DEVIATION, MAX_DEVIATION)
    out = np.zeros((n, steps))
    need = min(cfg.min_history, cfg.memory)
    m_size, e_size, w_size = cfg.memory, state.surprises.shape[2], state.errors.shape[1]
    for t in range(steps):
        ok = np.isfinite(actual[:, t]) & np.isfinite(z[:, t])
        if not ok.any():
            continue
        r = np.arange(n) if ok.all() else np.flatnonzero(ok)
        sel = slice(None) if r.size == n else r
        y, mu, lo, up = actual[sel, t], mean[sel, t], lower95[sel, t], upper95[sel, t]
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            span = state.high[sel] - state.low[sel]
            excess = np.maximum(np.maximum(y - state.high[sel], state.low[sel] - y), 0.0)
            novel = (span > 0) & (state.seen[sel] >= cfg.novelty_after)
            novelty = np.where(novel, np.minimum(cfg.novelty_weight * np.log1p(np.divide(excess, span, where=novel, out=np.zeros_like(y))),
                                                 MAX_SURPRISE), 0.0)
        shift = state.errors[sel].sum(axis=1) / max(cfg.correction_window, 1) if cfg.correction_window else 0.0
        z_corr = np.clip(standardised(y, mu + shift, lo + shift, up + shift), -MAX_DEVIATION, MAX_DEVIATION)
        s = np.stack([np.abs(z[sel, t]), np.abs(z_corr)], axis=1)  # (k, VIEWS)
        kept = np.minimum(state.dev_pos[sel], m_size)
        judged = kept >= need
        surprise = np.zeros(r.size)
        if judged.any():
            devs = state.devs[sel]
            exceed = (devs >= _f32(s)[:, :, None]).sum(axis=2)
            raw = -np.log((exceed + 1) / (kept[:, None] + 1))
            top = devs.max(axis=2).astype(float)
            # beyond in the memory's own float32 (a deviation under ~1e-38 is 0 there, as
            # remembered: a tiny one beyond a memory of zeros is not a record), and a log ratio
            # that rounding can never take below 0
            beyond = judged[:, None] & (_f32(s).astype(float) > top)
            for i, v in zip(*np.nonzero(beyond), strict=True):
                raw[i, v] += max(math.log1p(max(s[i, v] / max(top[i, v], 1e-12) - 1, 0.0)),
                                 tail_excess(np.sort(devs[i, v][np.isfinite(devs[i, v])]).astype(float), float(s[i, v]),
                                             cfg.tail_fraction))
            raw = np.minimum(raw + novelty[:, None], MAX_SURPRISE)
            before = state.surprises[sel].max(axis=2)
            damped = np.where(raw > before, raw, raw * cfg.repeat_damping)
            surprise = np.where(judged, damped.max(axis=1), 0.0)
            jr = r[judged]
            if cfg.excursion_reference > 0:
                rarity = -np.log((exceed[judged, 0] + 1) / (kept[judged] + 1))
                excursion = excursion_step(state, jr, rarity, kept[judged], cfg, surprise[judged], alert[sel][judged])
                surprise[judged] = np.maximum(surprise[judged], excursion)
                raw[judged] = np.maximum(raw[judged], excursion[:, None])  # one episode: a later bucket must beat it too
            slot = state.sur_pos[jr] % e_size
            state.surprises[jr[:, None], np.arange(s.shape[1])[None, :], slot[:, None]] = raw[judged]
            state.sur_pos[jr] += 1
        if counts[sel].any():
            is_count = counts[sel]
            rate = rate_lower(mu, lo)
            below = is_count & (y < rate)
            state.run_len[r[is_count & ~below]] = 0
            if below.any():
                br = r[below]
                slot = state.run_pos[br] % e_size
                state.run_rate[br, slot], state.run_seen[br, slot] = rate[below], y[below]
                state.run_pos[br] += 1
                state.run_len[br] = np.minimum(state.run_len[br] + 1, e_size)
                length = state.run_len[br]
                back = (state.run_pos[br][:, None] - 1 - np.arange(int(length.max()))[None, :]) % e_size
                shortfall = shortfall_surprises(state.run_rate[br[:, None], back], state.run_seen[br[:, None], back], length)
                counted = np.where((shortfall >= cfg.shortfall_surprise) & judged[below], shortfall, 0.0)
                surprise[below] = np.maximum(surprise[below], counted)
        surprise = np.minimum(surprise, MAX_SURPRISE)
        out[r[judged], t] = surprise[judged] / (surprise[judged] + cfg.scale)
        state.scored[r[judged]] += 1
        slot = state.dev_pos[r] % m_size
        state.devs[r[:, None], np.arange(s.shape[1])[None, :], slot[:, None]] = _f32(s)
        state.dev_pos[r] += 1
        if cfg.correction_window:
            state.errors[r, state.err_pos[r] % w_size] = np.clip(y - mu, -MAX_DEVIATION, MAX_DEVIATION)
            state.err_pos[r] += 1
        state.low[r], state.high[r] = np.minimum(state.low[sel], y), np.maximum(state.high[sel], y)
        state.seen[r] += 1
    return out, z


def warm(actual: np.ndarray, mean: np.ndarray, lower95: np.ndarray, upper95: np.ndarray, cfg: DetectorConfig | None = None,
         counts: bool = False) -> Memory:
    """The memory ``score`` leaves after these buckets (its episode surprises emptied), computed
    without the per-bucket loop: the views' deviations do not depend on the surprises, so the
    last ``memory`` of each, the recent errors and a shortfall's run are read straight off the
    buckets (the same memory as a full replay's, tested), for the price of a few array
    operations."""
    cfg = cfg or DetectorConfig()
    state = Memory.empty(1, cfg)
    actual, mean, lower95, upper95 = (np.asarray(a, dtype=float).ravel() for a in (actual, mean, lower95, upper95))
    with np.errstate(invalid="ignore"):
        z = np.clip(standardised(actual, mean, lower95, upper95), -MAX_DEVIATION, MAX_DEVIATION)
    use = np.isfinite(actual) & np.isfinite(z)
    y, mu, lo, up, z = actual[use], mean[use], lower95[use], upper95[use], z[use]
    k = y.size
    if not k:
        return state
    errors = np.clip(y - mu, -MAX_DEVIATION, MAX_DEVIATION)
    w = cfg.correction_window
    if w:
        c = np.concatenate([[0.0], np.cumsum(errors)])
        i = np.arange(k)
        shift = (c[i] - c[np.maximum(i - w, 0)]) / w  # the errors of the w buckets before each
    else:
        shift = np.zeros(k)
    z_corr = np.clip(standardised(y, mu + shift, lo + shift, up + shift), -MAX_DEVIATION, MAX_DEVIATION)
    last = np.arange(max(k - cfg.memory, 0), k)
    state.devs[0, 0, last % cfg.memory] = _f32(z[last])
    state.devs[0, 1, last % cfg.memory] = _f32(z_corr[last])
    state.dev_pos[0] = k
    if w:
        lw = np.arange(max(k - w, 0), k)
        state.errors[0, lw % w] = errors[lw]
        state.err_pos[0] = k
    if counts:
        below = y < rate_lower(mu, lo)
        run = k - (np.flatnonzero(~below)[-1] + 1 if (~below).any() else 0)
        e = state.run_rate.shape[1]
        run = min(run, e)
        if run:
            state.run_rate[0, :run], state.run_seen[0, :run] = rate_lower(mu[k - run:], lo[k - run:]), y[k - run:]
            state.run_len[0] = state.run_pos[0] = run
    if cfg.excursion_reference > 0:
        _warm_excursions(state, _f32(z), cfg)
    state.low[0], state.high[0], state.seen[0] = y.min(), y.max(), k
    state.scored[0] = max(0, k - min(cfg.min_history, cfg.memory))
    return state


def _warm_excursions(state: Memory, deviations: np.ndarray, cfg: DetectorConfig) -> None:
    """The excursion view's memory after ``deviations`` (|z|, oldest first), from the last two
    ``memory`` of them: each one's rarity among the ``memory`` before it, the running sum by
    Lindley's formula (``S_t = C_t - min(0, min C_{<=t})`` for the cumulative sum ``C``), and the
    peaks of the excursions that ended. The same as a replay's but for an excursion already
    under way two memories back (a forecast lagging a trend for days: its sum is counted from
    there), and an excursion under way at the end counts as having alerted (a warm-up raises no
    alert)."""
    k, m = deviations.size, cfg.memory
    first = max(min(cfg.min_history, m), k - 2 * m)
    if first >= k:
        return
    padded = np.concatenate([np.full(m, -np.inf, np.float32), deviations])
    windows = np.lib.stride_tricks.sliding_window_view(padded, m)[first:k]  # row j: the m before bucket first + j
    kept = np.minimum(np.arange(first, k), m)
    rarity = -np.log(((windows >= deviations[first:k, None]).sum(axis=1) + 1) / (kept + 1))
    c = np.cumsum(rarity - cfg.excursion_reference)
    run = c - np.minimum(np.minimum.accumulate(c), 0.0)
    positive = run > 0
    ends = np.flatnonzero(~positive[1:] & positive[:-1]) + 1  # buckets where an excursion fell back to 0
    starts = np.flatnonzero(positive & ~np.r_[False, positive[:-1]])
    peaks = np.maximum.reduceat(run, starts)[: ends.size] if ends.size else np.zeros(0)
    h = state.exc_peaks.shape[1]
    last = np.arange(max(ends.size - h, 0), ends.size)
    state.exc_peaks[0, last % h] = peaks[last]
    state.exc_ends[0, last % h] = first + ends[last]
    state.exc_pos[0] = ends.size
    state.exc_sum[0] = run[-1]
    state.exc_peak[0] = run[starts[-1]:].max() if positive[-1] else 0.0
    state.exc_fired[0] = bool(positive[-1])
