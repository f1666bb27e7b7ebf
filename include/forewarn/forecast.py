"""Forecasts with calibrated prediction intervals. Pure: numpy and statsmodels, no I/O.

The models are a registry (``MODELS``; ``ForecastConfig.model`` chooses); calibration and the
seasonal-naive floor wrap whichever is chosen. The default, ``ar``, is an ensemble of sparse
autoregressions fitted by least squares (the
``AutoReg`` model of statsmodels, solved directly on the chosen lags): one on the series, one on
``log1p`` of it when the series is never negative. Their lags sit around 1, the daily season, twice the season and the week, so daily
and weekly patterns, trend and level shifts are carried by the recent values themselves. Where
a day has at most ``PHASES_MAX_SEASON`` buckets (half-hourly or coarser), each also comes as a
second member with an intercept per time of day instead of one constant, so a sharp daily shape
is learnt from every day at once rather than carried by noisy past values. The point forecast
averages the members (0.3 on the raw ones, 0.7 on the log ones); each interval averages their
quantiles.

Model intervals have the right shape but are too narrow, so they are widened per level by a
factor calibrated on rolling origins at the end of the history (the same model refitted as if
each origin were "now"), and never reaching beyond the history's own spread at that level
(``band_limits``: a long horizon's band must not outgrow everything the series has done).
Seasonal naive is the fallback: for short histories (cold start), for
constant series and whenever a fit fails, with the reason recorded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
from scipy.signal import lfilter
from scipy.stats import f as f_dist
from scipy.stats import norm, trim_mean

DEFAULT_LEVELS = (0.8, 0.95, 0.99)
#: The intercept per time of day joins the ensemble by default where a day has at most this
#: many buckets (half-hourly grain or coarser). On M4 Hourly it lowers sMAPE, MASE and MSIS in
#: both halves of the series; at 5 minutes (288 intercepts) it cost NAB's held-out folds 2.5
#: points (1.6 with two weeks of history behind every intercept; ``benchmarks/README.md``).
PHASES_MAX_SEASON = 48
#: The week lag enters the autoregression as the mean of the buckets within this share of a day
#: either side of it (``ForecastConfig.week_half``): at 5 minutes the hour around the same time a
#: week back (6 buckets either side), at hourly grain the bucket itself. A single noisy bucket a
#: week back is a regressor the fit discounts (errors in a regressor bias its coefficient towards
#: 0): on 5-minute counts trained to Sunday midnight on 14 days, the week member's coefficient
#: was 0.17 and Monday's first hour was forecast at 77% of its true rate; averaged, 0.72 and 83%.
#: Chosen by leave-one-category-out on NAB among 0, 2, 3, 6 and 12 buckets either side (70.70,
#: 70.83, 70.76, 72.98, 70.14); at hourly grain one either side was no better on M4 Hourly
#: (``benchmarks/README.md``, "The week lag, averaged").
WEEK_WINDOW = 1 / 48
#: Seasonal naive replaces the model when the model's validation MASE is this many times worse.
FLOOR_MARGIN = 1.25


@dataclass(frozen=True)
class ForecastConfig:
    """Knobs of the default forecaster; ``season`` and ``week`` are in buckets."""

    season: int = 24
    week: int | None = 168
    horizon: int = 48
    levels: tuple[float, ...] = DEFAULT_LEVELS
    calibration_windows: int = 6
    calibration_step: int | None = None  # default: the horizon
    min_seasons: int = 3  # fewer full seasons of history -> cold start (seasonal naive)
    use_log: bool = True
    max_history: int | None = None  # keep only the most recent values (fit speed)
    #: How many of the lag sets to use (the richest ones); 0 = all. With two to three weeks of
    #: history both sets are used regardless (``lag_sets``).
    lag_members: int = 1
    #: Weight of the log1p members in the ensemble (the rest goes to the raw ones).
    log_weight: float = 0.7
    #: The model family, by name in ``MODELS`` (the interval calibration and the seasonal-naive
    #: floor wrap whichever it is).
    model: str = "ar"
    #: Whether each autoregression also comes as a member with an intercept per time of day:
    #: "on", "off", or "auto": on when the day has at most ``PHASES_MAX_SEASON`` buckets.
    phases: str = "auto"
    #: Buckets either side of the week lag averaged into it (None: ``WEEK_WINDOW`` of a day's).
    week_half: int | None = None
    #: Whether the members may have an intercept per day of the week: those with one per time of
    #: day where every weekday has two whole days in the fit and BIC wants them (``_fit_phase_ar``);
    #: at grains with no such members (finer than half-hourly) the plain ones, where the days'
    #: means want them (``_weekday_columns``).
    weekdays: bool = True
    #: Buckets from the start of a day to where the history ends (the forecast's first bucket's
    #: time of day): 0 where training runs to midnight. The weekdays are days of the clock.
    day_offset: int = 0

    def __post_init__(self) -> None:
        if self.phases not in ("on", "off", "auto"):
            raise ValueError(f"phases must be on, off or auto, not {self.phases!r}")
        if self.week_half is not None and not (0 <= self.week_half < (self.week or 0) // 2):
            raise ValueError(f"week_half={self.week_half}: the buckets averaged either side of the week lag must be at least 0 "
                             f"and fewer than half the week ({self.week} buckets)")

    @property
    def phased(self) -> bool:
        if self.season < 2:  # one intercept is the constant the plain member has
            return False
        return self.phases == "on" or (self.phases == "auto" and self.season <= PHASES_MAX_SEASON)

    def smoothing(self, lags: list[int]) -> dict[int, int] | None:
        """The lags of ``lags`` that enter averaged, with their half-widths (``_lag_columns``)."""
        half = self.week_half if self.week_half is not None else int(self.season * WEEK_WINDOW)
        return {self.week: half} if half > 0 and self.week in lags else None

    @classmethod
    def for_grain(cls, grain_seconds: int, horizon: int | None = None, **changes) -> ForecastConfig:
        """Daily season and weekly lag in buckets of ``grain_seconds``; horizon one day by default."""
        season = 86400 // grain_seconds
        return cls(season=season, week=7 * season, horizon=horizon or season, **changes)

    def lag_sets(self, n: int) -> list[list[int]]:
        """Lag sets, simplest first, as far as the history supports them: around 1, the season
        and twice the season; and the same plus the week (with its neighbours once four weeks
        of history exist). The default uses the richest one (``lag_members``), except from two
        weeks of history until the week lag passes the third of the history every lag must stay
        under (just past three weeks): there the week lag has a week or so of pairs to be fitted
        on, so the ensemble holds both sets, whatever ``lag_members`` says. On M4 Hourly cut to
        14 days both sets beat the daily lags alone on sMAPE, MASE and MSIS, and the week lag's
        set alone on MASE and MSIS (its intervals were too narrow); ``benchmarks/README.md``."""
        m, w = self.season, self.week
        daily = [1, 2, 3, m - 1, m, m + 1, 2 * m - 1, 2 * m, 2 * m + 1]
        sets = [daily]
        if w and n >= 4 * w:
            sets.append(daily + [w - 1, w, w + 1])
        elif w and n >= 3 * w:
            sets.append(daily + [w])
        out = []
        for lags in sets:
            usable = sorted({lag for lag in lags if 0 < lag < n // 3})
            if usable and usable not in out:
                out.append(usable)
        if w and n >= 2 * w and out and w not in out[-1]:  # too short for the week lag alone: both sets
            return out + [sorted(set(out[-1]) | {w})]
        return out[-self.lag_members :] if self.lag_members else out


@dataclass
class Forecast:
    """Point forecast and interval bounds for steps 1..h after the history."""

    mean: np.ndarray
    lower: dict[float, np.ndarray]
    upper: dict[float, np.ndarray]
    model: str
    warnings: list[str] = field(default_factory=list)
    calibration: dict[float, float] = field(default_factory=dict)
    #: Mean MASE of the rolling-origin forecasts used for calibration (None: not measured).
    validation_mase: float | None = None
    #: Out-of-sample forecasts of the history's end: (position, actual, mean, lower_95, upper_95).
    backtest: np.ndarray | None = None


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def fill_gaps(y: np.ndarray, season: int) -> tuple[np.ndarray, int]:
    """Replace NaN with the value one season earlier (else linear interpolation); returns the
    filled copy and how many values were filled."""
    y = np.asarray(y, dtype=float).copy()
    missing = np.isnan(y)
    count = int(missing.sum())
    if not count:
        return y, 0
    if missing.all():
        return np.zeros_like(y), count
    for i in np.flatnonzero(missing):
        if i >= season and not np.isnan(y[i - season]):
            y[i] = y[i - season]
    still = np.isnan(y)
    if still.any():
        idx = np.arange(y.size)
        y[still] = np.interp(idx[still], idx[~still], y[~still])
    return y, count


def seasonal_naive(y: np.ndarray, horizon: int, season: int) -> np.ndarray:
    if y.size >= season:
        last = y[-season:]
        return np.resize(last, horizon)
    return np.full(horizon, y[-1] if y.size else 0.0)


@dataclass
class _ArFit:
    const: float
    lags: np.ndarray
    coefs: np.ndarray
    sigma: float
    #: An intercept per day of the week (the forecast's first day's weekday 0), days of the
    #: clock of ``season`` buckets counted back from the end of the history fitted on (``end``,
    #: ``offset`` buckets into its day); None: none.
    weekdays: np.ndarray | None = None
    season: int = 0
    end: int = 0
    offset: int = 0

    def intercept(self, n: int, horizon: int) -> np.ndarray:
        """The intercept of the ``horizon`` steps after a history of ``n``."""
        out = np.full(horizon, self.const)
        if self.weekdays is not None:
            out += self.weekdays[_weekday(n + np.arange(horizon), self.end, self.season, self.offset)]
        return out

    def predict(self, history: np.ndarray, horizon: int) -> np.ndarray:
        return _recurse(self.lags, self.coefs, history, self.intercept(history.size, horizon))

    def step_se(self, horizon: int) -> np.ndarray:
        """Forecast standard error for steps 1..h from the MA(inf) weights of the AR model (its
        impulse response)."""
        impulse = np.zeros(horizon)
        impulse[0] = 1.0
        psi = lfilter([1.0], _denominator(self.lags, self.coefs, horizon), impulse)
        return self.sigma * np.sqrt(np.cumsum(psi**2))


def _recurse(lags: np.ndarray, coefs: np.ndarray, history: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    """``y[t] = intercept[t] + sum_l coefs_l * y[t - l]`` for the ``intercept.size`` steps after
    ``history``: the terms that reach back into the history are summed at once, and the rest is
    a linear recursion on the forecasts alone (``scipy.signal.lfilter``, in C), instead of a
    Python step per bucket."""
    horizon = intercept.size
    if not horizon:
        return np.empty(0)
    back = np.arange(horizon)[:, None] - lags[None, :]  # < 0: a value of the history
    known = back < 0
    past = np.where(known, history[np.where(known, history.size + back, 0)], 0.0)
    return lfilter([1.0], _denominator(lags, coefs, horizon), intercept + past @ coefs)


def _denominator(lags: np.ndarray, coefs: np.ndarray, horizon: int) -> np.ndarray:
    """The recursion ``1 - sum_l coefs_l B^l`` as a filter's denominator, up to ``horizon`` steps
    (a longer lag never reaches a forecast within them)."""
    a = np.zeros(horizon)
    a[0] = 1.0
    near = lags < horizon
    np.subtract.at(a, lags[near], coefs[near])  # a lag given twice adds up, as in the sum over the history
    return a


def _lag_columns(y: np.ndarray, lags: np.ndarray, start: int, smooth: dict[int, int] | None) -> np.ndarray:
    """The regressors of rows ``start..`` of ``y``: each lag's value, or for a lag in ``smooth``
    the mean of the ``2 * half + 1`` values centred on it (``half = smooth[lag]``). A column that
    varies only over its last ``2 * half + 1`` rows (a lag reaching back into a constant stretch,
    such as a young series' flat first week) says nothing of the lag: the fit is singular."""
    rows = np.arange(start, y.size)
    cols = []
    for lag in lags.tolist():
        half = (smooth or {}).get(lag, 0)
        if half:
            cols.append(np.lib.stride_tricks.sliding_window_view(y, 2 * half + 1)[rows - lag - half].mean(axis=1))
        else:
            cols.append(y[start - lag : y.size - lag])
        early = cols[-1][: cols[-1].size - (2 * half + 1)]
        if early.size and np.ptp(early) == 0:
            raise FloatingPointError(f"lag {lag} reaches back into a constant stretch: nothing to fit it on")
    return np.column_stack(cols)


def _expand(lags: np.ndarray, coefs: np.ndarray, smooth: dict[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    """The same model as plain lags: an averaged lag's coefficient shared by the lags it
    averages (a sum where two terms reach the same lag), so prediction and the standard errors
    stay those of an ordinary autoregression."""
    if not smooth:
        return lags, coefs
    terms: dict[int, float] = {}
    for lag, c in zip(lags.tolist(), coefs.tolist(), strict=True):
        half = smooth.get(lag, 0)
        for k in range(lag - half, lag + half + 1):
            terms[k] = terms.get(k, 0.0) + c / (2 * half + 1)
    out = np.array(sorted(terms))
    return out, np.array([terms[k] for k in out.tolist()])


def _start(lags: np.ndarray, smooth: dict[int, int] | None) -> int:
    return int(max(lag + (smooth or {}).get(int(lag), 0) for lag in lags.tolist()))


def _unit_scale(design: np.ndarray) -> np.ndarray:
    """Per column, the factor that brings it to unit scale: beside a constant's 1 (or 0/1
    weekday columns), lags of a series at 1e12 (or 1e-12) read as rank-deficient to lstsq's
    relative cutoff, and a regular series lost its model."""
    scale = np.abs(design).max(axis=0)
    scale[~(scale > 0)] = 1.0
    return scale


#: How sure the whole days' means must be of a weekly pattern before the plain members take an
#: intercept per weekday (an F-test's p-value; ``_weekday_columns``).
WEEKDAY_P = 0.01


def _weekday_columns(y: np.ndarray, start: int, season: int, offset: int) -> np.ndarray | None:
    """Six 0/1 columns, one per day of the clock's week but the one the forecast starts in, for rows
    ``start..`` of ``y`` (``_weekday``: ``season`` buckets a day, the history ending ``offset``
    into its day), where the days want them: the rows fitted hold two whole days of every
    weekday (one is a one-off as often as a weekday: a holiday a week back would come out again
    as that weekday's level), and an F-test over the whole days' trimmed means (a tenth cut from
    each end of the day, so one wild bucket does not make a day) finds an intercept per weekday
    on top of a line through them at p < ``WEEKDAY_P``. Judged on days, not buckets: at 5
    minutes a test over thousands of strongly correlated buckets passes intercepts that only
    follow a wandering level. None where they are not wanted."""
    size = y.size
    clock = (np.arange(start, size) - size + offset) // season  # days of the clock: _weekday's before the modulo
    first = clock[0]
    count = np.bincount(clock - first)
    whole = np.flatnonzero(count == season)
    weekday = (whole + first) % 7
    if np.bincount(weekday, minlength=7).min() < 2:
        return None
    rows = np.searchsorted(clock - first, whole)[:, None] + np.arange(season)[None, :]  # each whole day's buckets
    means = trim_mean(y[start:][rows], 0.1, axis=1)
    t = whole / whole.max()
    line = np.column_stack([np.ones(t.size), t])
    both = np.column_stack([line, weekday[:, None] == np.arange(1, 7)[None, :]])
    rss = [np.sum((means - x @ np.linalg.lstsq(x, means, rcond=None)[0]) ** 2) for x in (line, both)]
    spare = means.size - both.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):  # days with no spread at all: inf, or nan for 0/0
        p = f_dist.sf((rss[0] - rss[1]) / 6 / (rss[1] / spare), 6, spare)
    if not p < WEEKDAY_P:
        return None
    return (clock[:, None] % 7 == np.arange(1, 7)[None, :]).astype(float)  # clock % 7 is _weekday


def _fit_ar(y: np.ndarray, lags: list[int], smooth: dict[int, int] | None = None, weekdays: bool = False,
            season: int = 0, offset: int = 0) -> _ArFit:
    """Least squares on a constant and the chosen lags only (statsmodels' ``AutoReg`` computes
    the same fit, but builds every lag up to the largest: 100x slower at a weekly lag of 2016).
    A lag in ``smooth`` enters as the mean of the values around it (``_lag_columns``). With
    ``weekdays``, an intercept per day of the clock's week (``season`` buckets a day, ``offset``
    into its day where the history ends) where the days' means want them (``_weekday_columns``)."""
    lag_arr = np.asarray(lags)
    start = _start(lag_arr, smooth)
    n = y.size - start
    if n <= lag_arr.size + 1:
        raise ValueError("history too short for the lags")
    days = _weekday_columns(y, start, season, offset) if weekdays and season > 1 else None
    k = lag_arr.size + 1
    design = np.empty((n, k + (0 if days is None else 6)))
    design[:, 0] = 1.0
    design[:, 1:k] = _lag_columns(y, lag_arr, start, smooth)
    if days is not None:
        design[:, k:] = days
    target = y[start:]
    scale = _unit_scale(design)
    params, _, rank, _ = np.linalg.lstsq(design / scale, target, rcond=None)
    params = params / scale
    if days is not None and (rank < design.shape[1] or not np.all(np.isfinite(params))):  # the weekdays' columns
        days, design, scale = None, design[:, :k], scale[:k]                             # made it singular: without
        params, _, rank, _ = np.linalg.lstsq(design / scale, target, rcond=None)
        params = params / scale
    if rank < design.shape[1] or not np.all(np.isfinite(params)):
        raise FloatingPointError("singular or non-finite AR fit")
    resid = target - design @ params
    plain, coefs = _expand(lag_arr, params[1:k], smooth)
    return _ArFit(const=float(params[0]), lags=plain, coefs=coefs, sigma=float(np.sqrt(np.mean(resid**2))),
                  weekdays=None if days is None else np.r_[0.0, params[k:]], season=season, end=y.size, offset=offset)


#: Observations of each time of day an intercept per time of day needs (fewer: the member is left out).
MIN_PER_PHASE = 3


@dataclass
class _PhaseArFit(_ArFit):
    """The same autoregression with one intercept per position in the season (the time of day)
    instead of one constant: a daily shape the lags alone carry only through noisy past values."""

    alphas: np.ndarray = field(default_factory=lambda: np.zeros(1))

    def intercept(self, n: int, horizon: int) -> np.ndarray:
        return super().intercept(n, horizon) + self.alphas[(n + np.arange(horizon)) % self.alphas.size]


def _weekday(position: np.ndarray, end: int, season: int, offset: int = 0) -> np.ndarray:
    """The day of the week (0-6) of each position, days of the clock counted back from ``end``,
    which is ``offset`` buckets into its day: the day ``end`` falls in is day 0, the one before
    it day 6. So the days are the clock's whatever time the history starts or ends at."""
    return (position - end + offset) // season % 7


def _fit_phase_ar(y: np.ndarray, lags: list[int], season: int, smooth: dict[int, int] | None = None,
                  weekdays: bool = False, offset: int = 0) -> _PhaseArFit:
    """Least squares on the chosen lags and an intercept per position modulo ``season``, solved
    by Frisch-Waugh-Lovell (every column less its mean over the same position), so the intercepts
    cost a pass over the data, not ``season`` more columns. Positions count from the history's
    start and continue into the forecast, so no clock is needed.

    With ``weekdays``, once every day of the week has two whole days among the rows fitted (one
    is a one-off as often as a weekday: a holiday a week back came out again), six more columns
    give an intercept per day of the clock's week (``_weekday``; ``offset``: how far into its
    day the history ends), kept where the Bayesian information criterion wants them: a shop's
    quiet weekend, which lags cannot forecast (the day before says weekday on Saturday, the week
    before says nothing until it is learnt). Measured (``benchmarks/README.md``, "Days of the
    week"): NAB held out and development unchanged; M4 Hourly unchanged at 14 days (two of each
    weekday come later), 0.11 sMAPE better at 21, within 0.004 MASE elsewhere."""
    lag_arr = np.asarray(lags)
    start, size = _start(lag_arr, smooth), y.size
    phase = np.arange(start, size) % season
    count = np.bincount(phase, minlength=season).astype(float)
    if count.min() < MIN_PER_PHASE:
        raise ValueError("too few seasons for an intercept per time of day")
    design = _lag_columns(y, lag_arr, start, smooth)
    target = y[start:]
    k = lag_arr.size
    if weekdays:
        day = _weekday(np.arange(start, size), size, season, offset)
        if np.bincount(day, minlength=7).min() >= 2 * season:
            design = np.column_stack([design, day[:, None] == np.arange(1, 7)[None, :]])
    scale = _unit_scale(design)
    design = design / scale

    def by_phase(col: np.ndarray) -> np.ndarray:
        return np.bincount(phase, weights=col, minlength=season) / count

    target_means = by_phase(target)
    design_means = np.column_stack([by_phase(design[:, j]) for j in range(design.shape[1])])
    centred_design, centred_target = design - design_means[phase], target - target_means[phase]
    coefs, _, rank, _ = np.linalg.lstsq(centred_design, centred_target, rcond=None)
    resid = centred_target - centred_design @ coefs
    if design.shape[1] > k:  # with intercepts per weekday: kept if BIC wants them, and if the fit is sound
        lag_coefs, _, lag_rank, _ = np.linalg.lstsq(centred_design[:, :k], centred_target, rcond=None)
        lag_resid = centred_target - centred_design[:, :k] @ lag_coefs
        with np.errstate(divide="ignore", invalid="ignore"):  # a fit with no residual at all: -inf, or nan for 0/0
            gain = resid.size * np.log(np.sum(resid**2) / np.sum(lag_resid**2)) + 6 * np.log(resid.size)
        if not (rank == design.shape[1] and np.all(np.isfinite(coefs)) and gain < 0):
            coefs, rank, resid, design_means, scale = lag_coefs, lag_rank, lag_resid, design_means[:, :k], scale[:k]
    if rank < k or not np.all(np.isfinite(coefs)):
        raise FloatingPointError("singular or non-finite AR fit")
    alphas = target_means - design_means @ coefs
    coefs = coefs / scale
    plain, expanded = _expand(lag_arr, coefs[:k], smooth)
    return _PhaseArFit(const=0.0, lags=plain, coefs=expanded, sigma=float(np.sqrt(np.mean(resid**2))), alphas=alphas,
                       weekdays=np.r_[0.0, coefs[k:]] if coefs.size > k else None, season=season, end=size, offset=offset)


def _ensemble(y: np.ndarray, cfg: ForecastConfig, levels: tuple[float, ...]) -> tuple[np.ndarray, dict, dict, str]:
    """Point forecast and *uncalibrated* quantile bounds of the raw + log1p AR ensemble."""
    h = cfg.horizon
    z = {lv: norm.ppf(0.5 + lv / 2) for lv in levels}
    lo_ok, hi_ok = y.min() - 2 * np.ptp(y), y.max() + 2 * np.ptp(y)
    means, lowers, uppers, names = [], [], [], []
    failed: Exception | None = None
    transforms = [("ar", None)]
    if cfg.use_log and y.min() >= 0:
        transforms.append(("log-ar", math.log1p(hi_ok)))
    for lags in cfg.lag_sets(y.size):
        for (label, cap), phased in ((t, p) for t in transforms for p in ((False, True) if cfg.phased else (False,))):
            series = y if cap is None else np.log1p(y)
            try:
                smooth = cfg.smoothing(lags)
                fit = (_fit_phase_ar(series, lags, cfg.season, smooth, cfg.weekdays, cfg.day_offset) if phased
                       else _fit_ar(series, lags, smooth, cfg.weekdays and not cfg.phased, cfg.season,
                                    cfg.day_offset))
            except (ValueError, FloatingPointError) as err:  # that member is left out; the others stand
                failed = failed or err
                continue
            pred = fit.predict(series, h)
            if not np.all(np.isfinite(pred)):
                continue
            if cap is None and (pred.min() < lo_ok or pred.max() > hi_ok):
                continue
            if cap is not None and pred.max() > cap:
                continue
            se = fit.step_se(h)
            if cap is None:
                means.append(pred)
                lowers.append({lv: pred - z[lv] * se for lv in levels})
                uppers.append({lv: pred + z[lv] * se for lv in levels})
            else:
                means.append(np.expm1(pred))
                lowers.append({lv: np.expm1(pred - z[lv] * se) for lv in levels})
                uppers.append({lv: np.expm1(np.minimum(pred + z[lv] * se, cap + 1.0)) for lv in levels})
            names.append(f"{label}{max(lags)}{'p' if phased else ''}{'w' if getattr(fit, 'weekdays', None) is not None else ''}")
    if not means:
        if failed is not None:
            raise failed
        raise FloatingPointError("every model's forecast left the range the history supports (unstable fit)")
    name = "+".join(names)
    # each transform's weight is shared by its members (with and without intercepts per time of day)
    shares = {t: sum(n.startswith(t) for n in names) for t in ("log", "ar")}
    weights = np.array([cfg.log_weight / shares["log"] if n.startswith("log") else (1.0 - cfg.log_weight) / shares["ar"]
                        for n in names])
    weights = weights / weights.sum() if weights.sum() > 0 else np.full(len(names), 1.0 / len(names))
    mean = sum(w * m for w, m in zip(weights, means, strict=True))
    lower = {lv: sum(w * b[lv] for w, b in zip(weights, lowers, strict=True)) for lv in levels}
    upper = {lv: sum(w * b[lv] for w, b in zip(weights, uppers, strict=True)) for lv in levels}
    return mean, lower, upper, name


def _ets(y: np.ndarray, cfg: ForecastConfig, levels: tuple[float, ...]) -> tuple[np.ndarray, dict, dict, str]:
    """Point forecast and *uncalibrated* quantile bounds of an exponential smoothing state
    space model (statsmodels ``ETSModel``: additive error, damped additive trend, additive daily
    season; on ``log1p`` of a series that is never negative, so its season scales with the
    level), with the model's own prediction intervals."""
    import warnings

    from statsmodels.tools.sm_exceptions import ConvergenceWarning
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    logged = cfg.use_log and y.min() >= 0
    series = np.log1p(y) if logged else y
    h = cfg.horizon
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        import pandas as pd

        fit = ETSModel(pd.Series(series), error="add", trend="add", damped_trend=True, seasonal="add",
                       seasonal_periods=cfg.season).fit(disp=False, maxiter=200)
        pred = fit.get_prediction(start=series.size, end=series.size + h - 1)
        mean = np.asarray(pred.predicted_mean, dtype=float)
        lower, upper = {}, {}
        for lv in levels:
            frame = pred.summary_frame(alpha=1 - lv)
            lower[lv], upper[lv] = frame["pi_lower"].to_numpy(float), frame["pi_upper"].to_numpy(float)
    if not (np.all(np.isfinite(mean)) and all(np.all(np.isfinite(b)) for b in (*lower.values(), *upper.values()))):
        raise FloatingPointError("ETS forecast not finite")
    if logged:
        cap = math.log1p(y.max() + 2 * np.ptp(y))
        mean = np.expm1(np.minimum(mean, cap))
        lower = {lv: np.expm1(np.minimum(b, cap)) for lv, b in lower.items()}
        upper = {lv: np.expm1(np.minimum(b, cap + 1.0)) for lv, b in upper.items()}
    return mean, lower, upper, "log-ets" if logged else "ets"


#: ETS estimates a starting value for every bucket of its season: past this many (a daily season
#: at hourly grain is 24; at 5 minutes, 288) its fit takes minutes, so the AR is used instead.
ETS_MAX_SEASON = 48

#: Forecasting model families by name: each gives a point forecast and uncalibrated quantile
#: bounds (and a label) for ``cfg.horizon`` steps after a gap-free history.
MODELS = {"ar": _ensemble, "ets": _ets}


def model_bands(name: str):
    """The model family ``name`` (``MODELS``), or a ``ValueError`` that lists them."""
    if name not in MODELS:
        raise ValueError(f"unknown forecasting model {name!r}: choose one of {', '.join(MODELS)}")
    return MODELS[name]


def _calibrate(
    y: np.ndarray, cfg: ForecastConfig, levels: tuple[float, ...]
) -> tuple[dict[float, float], tuple[float, float] | None, list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]]:
    """Refit at rolling origins at the end of the history and compare with what followed.

    Returns, per level, the factor by which the ensemble's intervals must widen for the spread
    of those errors (the ratio of actual to model error scale, never below 1: steadier than a
    tail quantile of so few, strongly correlated, points), the mean out-of-sample MASE of the
    model and of seasonal naive, and the windows themselves (origin, mean, lower 95%, upper 95%:
    uncalibrated)."""
    step = cfg.calibration_step or cfg.horizon
    h = cfg.horizon
    z = {lv: norm.ppf(0.5 + lv / 2) for lv in levels}
    ratios: dict[float, list[np.ndarray]] = {lv: [] for lv in levels}
    errors: list[float] = []
    naive_errors: list[float] = []
    windows = []
    for w in range(1, cfg.calibration_windows + 1):
        origin = y.size - h - (w - 1) * step
        if origin < cfg.min_seasons * cfg.season + cfg.season:
            break
        past, future = y[:origin], y[origin : origin + h]
        # the origin's time of day, so its weekdays are the clock's as the forecast's are
        at = replace(cfg, day_offset=(cfg.day_offset + origin - y.size) % cfg.season)
        try:
            mean, lower, upper, _ = model_bands(cfg.model)(past, at, levels)
        except (np.linalg.LinAlgError, ValueError, FloatingPointError):
            continue
        errors.append(mase(future, mean, past, cfg.season))
        naive_errors.append(mase(future, seasonal_naive(past, h, cfg.season), past, cfg.season))
        if 0.95 in lower:
            windows.append((origin, mean, lower[0.95], upper[0.95]))
        dev = np.abs(future - mean)
        for lv in levels:
            half = np.where(future > mean, upper[lv] - mean, mean - lower[lv])
            with np.errstate(divide="ignore", invalid="ignore"):
                ratios[lv].append(np.where(half > 0, dev / half, np.where(dev > 0, np.inf, 0.0)))
    factors = {}
    for lv in levels:
        r = np.concatenate(ratios[lv]) if ratios[lv] else np.array([])
        r = r[np.isfinite(r)]
        factors[lv] = max(1.0, float(z[lv] * np.sqrt(np.mean(r**2)))) if r.size else 1.0
    pairs = [(e, n) for e, n in zip(errors, naive_errors, strict=True) if np.isfinite(e) and np.isfinite(n)]
    validation = (float(np.mean([e for e, _ in pairs])), float(np.mean([n for _, n in pairs]))) if pairs else None
    return factors, validation, windows


def baseline_forecast(y: np.ndarray, cfg: ForecastConfig, levels: tuple[float, ...], reason: str) -> Forecast:
    """Seasonal naive with intervals from the spread of its own in-sample errors."""
    h, m = cfg.horizon, cfg.season
    mean = seasonal_naive(y, h, m)
    if y.size > m:
        errors = y[m:] - y[:-m]
    elif y.size > 1:
        errors = np.diff(y)
    else:
        errors = np.zeros(1)
    scale = float(np.sqrt(np.mean(errors**2))) if errors.size else 0.0
    steps = np.sqrt(np.floor(np.arange(h) / max(m, 1)) + 1)  # one more season of error per season ahead
    lower, upper, q = {}, {}, {}
    for lv in levels:
        q[lv] = float(np.quantile(np.abs(errors), lv)) if errors.size >= 20 else norm.ppf(0.5 + lv / 2) * scale
        lower[lv] = mean - q[lv] * steps
        upper[lv] = mean + q[lv] * steps
    backtest = None
    if y.size > 2 * m and 0.95 in q:  # its own one-season-ahead forecasts of the history's end
        pos = np.arange(max(m, y.size - cfg.calibration_windows * h), y.size)
        naive = y[pos - m]
        backtest = np.column_stack([pos, y[pos], naive, naive - q[0.95], naive + q[0.95]])
    return Forecast(mean=mean, lower=lower, upper=upper, model="seasonal_naive", warnings=[reason], backtest=backtest)


# --------------------------------------------------------------------------------------------
# The forecaster
# --------------------------------------------------------------------------------------------


def forecast(y: np.ndarray, cfg: ForecastConfig | None = None) -> Forecast:
    """Forecast ``cfg.horizon`` steps after ``y`` (equally spaced, NaN = missing)."""
    cfg = cfg or ForecastConfig()
    model_bands(cfg.model)
    notes: list[str] = []
    if cfg.model == "ets" and cfg.season > ETS_MAX_SEASON:
        notes.append(f"ets fits a season of at most {ETS_MAX_SEASON} buckets (this grain's day has {cfg.season}): ar used")
        cfg = replace(cfg, model="ar")
    bands = model_bands(cfg.model)
    levels = tuple(sorted(cfg.levels))
    y = np.asarray(y, dtype=float)
    if cfg.max_history and y.size > cfg.max_history:
        y = y[-cfg.max_history :]
    y, filled = fill_gaps(y, cfg.season)
    if filled:
        notes.append(f"{filled} missing values filled from the previous season")
    if y.size < cfg.min_seasons * cfg.season + cfg.season:
        fc = baseline_forecast(y, cfg, levels, f"cold start: {y.size} values, the model needs {(cfg.min_seasons + 1) * cfg.season}")
        fc.warnings = notes + fc.warnings
        return fc
    if np.ptp(y) == 0:
        fc = baseline_forecast(y, cfg, levels, "constant series")
        fc.warnings = notes + fc.warnings
        return fc
    try:
        mean, lower, upper, name = bands(y, cfg, levels)
        factors, validation, windows = _calibrate(y, cfg, levels)
    except (np.linalg.LinAlgError, ValueError, FloatingPointError) as err:
        fc = baseline_forecast(y, cfg, levels, f"model fit failed ({err}); seasonal naive used")
        fc.warnings = notes + fc.warnings
        return fc
    if not np.all(np.isfinite(mean)):
        fc = baseline_forecast(y, cfg, levels, "model forecast was not finite; seasonal naive used")
        fc.warnings = notes + fc.warnings
        return fc
    if validation is not None and validation[0] > FLOOR_MARGIN * validation[1]:
        # seasonal naive is always a candidate, and the floor
        fc = baseline_forecast(y, cfg, levels, f"seasonal naive beat the model on the validation windows "
                                               f"(MASE {validation[1]:.3f} vs {validation[0]:.3f})")
        fc.warnings = notes + fc.warnings
        fc.validation_mase = validation[1]
        return fc
    limits = band_limits(y, levels, cfg.season)
    for lv in levels:
        f = factors[lv]
        lower[lv], upper[lv] = limit_band(mean, mean - f * (mean - lower[lv]), mean + f * (upper[lv] - mean), limits.get(lv))
    # nested, ordered bands
    for a, b in zip(levels, levels[1:], strict=False):
        lower[b] = np.minimum(lower[b], lower[a])
        upper[b] = np.maximum(upper[b], upper[a])
    if y.min() >= 0:
        mean = np.maximum(mean, 0.0)
        for lv in levels:
            lower[lv] = np.maximum(lower[lv], 0.0)
    backtest = _backtest(y, windows, factors.get(0.95, 1.0), limits.get(0.95))
    return Forecast(mean=mean, lower=lower, upper=upper, model=name, warnings=notes, calibration=factors,
                    validation_mase=None if validation is None else validation[0], backtest=backtest)


def band_limits(y: np.ndarray, levels: tuple[float, ...], recent: int = 0) -> dict[float, tuple[float, float, float, float]]:
    """Per level, how far a band may reach: the history's own central interval at that level
    (its quantiles), or, around a forecast near or beyond its ends (a trend, a new level), that
    share of the history's distances from its median; beyond them, of the last ``recent``
    values' distances from theirs if wider (a new level learnt a day ago is as noisy as it is,
    not as the weeks before it were). A near-unit-root fit's band grows with the horizon as a
    random walk's would (a day ahead of a machine's temperature, +-100 around 90); a series that
    stays within its range does not, and a band wider than all it has done hides every
    departure from it. Per level: (lowest, highest, widest half, widest half beyond).
    Measured: NAB held out 71.60 (69.87 without), development 67.07 (65.94); M4 Hourly MSIS
    6.02 (6.09) at the same coverage, sMAPE and MASE (``benchmarks/README.md``)."""
    finite = y[np.isfinite(y)]
    if not finite.size:
        return {}
    share = np.asarray(levels, dtype=float)
    halves = np.quantile(np.abs(finite - np.median(finite)), share)
    last = finite[-recent:] if recent > 1 else finite[:0]
    beyond = np.maximum(halves, np.quantile(np.abs(last - np.median(last)), share)) if last.size > 1 else halves
    ends = np.quantile(finite, np.r_[0.5 - share / 2, 0.5 + share / 2]).reshape(2, -1)
    # a history constant at that level limits nothing
    return {lv: (float(ends[0, i]), float(ends[1, i]), float(halves[i]), float(beyond[i])) for i, lv in enumerate(levels)
            if halves[i] > 0}


def limit_band(mean: np.ndarray, lower: np.ndarray, upper: np.ndarray, limits: tuple[float, float, float, float] | None
               ) -> tuple[np.ndarray, np.ndarray]:
    """``lower`` and ``upper`` held within ``limits`` (``band_limits``' for their level)."""
    if limits is None:
        return lower, upper
    lo, hi, half, half_beyond = limits
    reach_up = np.maximum(hi, mean + np.where(mean > hi, half_beyond, half))
    reach_down = np.minimum(lo, mean - np.where(mean < lo, half_beyond, half))
    return np.maximum(lower, reach_down), np.minimum(upper, reach_up)


def _backtest(y: np.ndarray, windows: list, factor: float, limits: tuple[float, float, float, float] | None = None) -> np.ndarray | None:
    """Out-of-sample forecasts for the end of the history, from the calibration windows (the
    latest forecast for each position), with the calibrated 95% band, limited as the forecast's
    is (``band_limits``): rows of (position, actual, mean, lower_95, upper_95). The detector
    warms up on them."""
    if not windows:
        return None
    rows = {}
    for origin, mean, lower, upper in sorted(windows, key=lambda w: w[0]):
        for k in range(mean.size):
            pos = origin + k
            if pos < y.size:
                rows[pos] = (pos, y[pos], mean[k], mean[k] - factor * (mean[k] - lower[k]), mean[k] + factor * (upper[k] - mean[k]))
    out = np.array([rows[p] for p in sorted(rows)])
    out[:, 3], out[:, 4] = limit_band(out[:, 2], out[:, 3], out[:, 4], limits)
    return out


# --------------------------------------------------------------------------------------------
# Accuracy measures (M4 definitions)
# --------------------------------------------------------------------------------------------


def smape(actual: np.ndarray, fc: np.ndarray) -> float:
    denom = np.abs(actual) + np.abs(fc)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(denom > 0, 200.0 * np.abs(actual - fc) / denom, 0.0)
    return float(np.mean(terms))


def mase_scale(history: np.ndarray, m: int) -> float:
    if history.size <= m:
        return float(np.mean(np.abs(np.diff(history)))) if history.size > 1 else 1.0
    return float(np.mean(np.abs(history[m:] - history[:-m])))


def mase(actual: np.ndarray, fc: np.ndarray, history: np.ndarray, m: int) -> float:
    return float(np.mean(np.abs(actual - fc)) / mase_scale(history, m))


def msis(actual: np.ndarray, lower: np.ndarray, upper: np.ndarray, history: np.ndarray, m: int, alpha: float = 0.05) -> float:
    penalty = (upper - lower) + (2 / alpha) * (lower - actual) * (actual < lower) + (2 / alpha) * (actual - upper) * (actual > upper)
    return float(np.mean(penalty) / mase_scale(history, m))


def coverage(actual: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    return float(np.mean((actual >= lower) & (actual <= upper)))
