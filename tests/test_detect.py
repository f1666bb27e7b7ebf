"""The detector on generated data: each kind of anomaly is caught near its onset, one episode
raises one alert, clean seasonal data raises none, cold start stays silent."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from forewarn.detect import (
    HEAVY_TAIL_SHAPE,
    Z95,
    DetectorConfig,
    Memory,
    gpd_gap,
    rate_lower,
    score,
    score_many,
    standardised,
    tail_excess,
)
from forewarn.eval_nab import EpisodeSpans, forecast_stream, replay_stream

ONSET = 24 * 35


def hourly(kind: str, seed: int, n: int = 24 * 40) -> tuple[pd.Series, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    y = 100 + 20 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 3, n)
    a = ONSET
    if kind == "spike":
        y[a : a + 2] += 60
    elif kind == "drop":
        y[a : a + 10] *= 0.2
    elif kind == "level_shift":
        y[a:] += 40
    elif kind == "drift":
        y[a : a + 48] += np.linspace(0, 60, 48)
    elif kind == "missing":  # a count that stops: no events, so zero
        y[a : a + 6] = 0
    return pd.Series(pd.date_range("2026-01-01", periods=n, freq="h")), y


def alerts(kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    stamps, y = hourly(kind, seed)
    likelihood = replay_stream(stamps, y).likelihood
    alert = likelihood >= DetectorConfig().threshold
    onsets = np.flatnonzero(alert & ~np.r_[False, alert[:-1]])
    return likelihood, onsets


@pytest.mark.parametrize("kind", ["spike", "drop", "level_shift", "missing"])
@pytest.mark.parametrize("seed", [0, 1])
def test_abrupt_anomalies_alert_at_onset_and_only_there(kind, seed):
    likelihood, onsets = alerts(kind, seed)
    assert onsets.tolist() == [ONSET]
    assert 0 < likelihood.max() < 1


def test_a_slow_drift_is_caught_while_it_grows():
    """Caught in its first half, and one episode: no calm bucket (within the 99% band, which ends
    an episode) between its alerts."""
    stamps, y = hourly("drift", 0)
    replay = replay_stream(stamps, y)
    alert = replay.likelihood >= DetectorConfig().threshold
    onsets = np.flatnonzero(alert & ~np.r_[False, alert[:-1]])
    during = onsets[(onsets >= ONSET) & (onsets < ONSET + 48)]
    assert ONSET < during[0] < ONSET + 24 and not (onsets < ONSET).any()
    assert (np.abs(replay.z[during[0] : during[-1] + 1]) > 2.576).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clean_seasonal_data_raises_no_alert(seed):
    _, onsets = alerts("clean", seed)
    assert onsets.size == 0


def test_one_episode_one_alert_for_a_persisting_shift():
    likelihood, _ = alerts("level_shift", 0)
    after = likelihood[ONSET:]
    assert (after >= DetectorConfig().threshold).sum() <= 3


def test_cold_start_is_silent_and_counted():
    y = np.random.default_rng(0).normal(10, 1, 50)
    out, _, state = score(y, np.full(50, 10.0), np.full(50, 8.0), np.full(50, 12.0), None, DetectorConfig(min_history=100))
    assert not out.any() and state.scored.tolist() == [0] and state.seen.tolist() == [50]


def test_state_carries_across_calls_exactly():
    rng = np.random.default_rng(1)
    y = rng.normal(0, 1, 600)
    y[550] = 9
    args = (np.zeros(600), np.full(600, -2.0), np.full(600, 2.0))
    whole, _, _ = score(y, *args, None, DetectorConfig(min_history=50))
    first, _, state = score(y[:300], *(a[:300] for a in args), None, DetectorConfig(min_history=50))
    second, _, _ = score(y[300:], *(a[300:] for a in args), state, DetectorConfig(min_history=50))
    np.testing.assert_array_equal(np.r_[first, second], whole)
    assert whole.argmax() == 550


def test_scores_never_saturate_and_rank_bigger_deviations_higher():
    base = np.random.default_rng(2).normal(0, 1, 400)
    args = (np.zeros(401), np.full(401, -2.0), np.full(401, 2.0))
    tops = []
    for jump in (10.0, 20.0, 1e6):
        out, _, _ = score(np.r_[base, jump], *args, None, DetectorConfig(min_history=50))
        tops.append(out[-1])
    assert 0.5 < tops[0] < tops[1] < tops[2] < 1.0


def test_standardised_uses_the_side_of_the_band():
    z = standardised(np.array([12.0, 7.0]), np.array([10.0, 10.0]), np.array([4.0, 4.0]), np.array([11.0, 11.0]))
    assert z[0] == pytest.approx(2 * 1.959963984540054) and z[1] == pytest.approx(-0.5 * 1.959963984540054)


def test_missing_actuals_score_zero_and_leave_state_alone():
    out, _, state = score(np.array([np.nan, 1.0]), np.zeros(2), -np.ones(2), np.ones(2), None, DetectorConfig(min_history=5))
    assert out.tolist() == [0.0, 0.0] and state.seen.tolist() == [1]


def test_silence_where_events_were_expected_is_anomalous_for_counts():
    rng = np.random.default_rng(4)
    n = 400
    y = rng.poisson(8, n).astype(float)
    y[350:353] = 0  # fifteen minutes without a single event
    mean, lower, upper = np.full(n, 8.0), np.full(n, 4.0), np.full(n, 14.0)
    as_counts, _, _ = score(y, mean, lower, upper, None, DetectorConfig(min_history=50), counts=True)
    assert as_counts[350:353].max() >= DetectorConfig().threshold
    assert (as_counts[:350] < DetectorConfig().threshold).all()


def test_a_drop_where_few_events_are_expected_adds_up_as_counts():
    """Ten events expected per bucket, a band as wide as Poisson noise: a drop to 15% lasting
    five buckets leaves every bucket near the band's edge, but together they cannot be chance."""
    rng = np.random.default_rng(5)
    n = 3000
    y = rng.poisson(10, n).astype(float)
    y[2900:2905] = rng.poisson(1.5, 5)
    mean, lower, upper = np.full(n, 10.0), np.full(n, 4.0), np.full(n, 17.0)
    cfg = DetectorConfig(min_history=288)
    as_counts, _, _ = score(y, mean, lower, upper, None, cfg, counts=True)
    plain, _, _ = score(y, mean, lower, upper, None, cfg)
    assert as_counts[2900:2905].max() >= cfg.threshold
    assert plain[2900:2905].max() < cfg.threshold  # bucket by bucket it is within the noise
    # ten days of ordinary counts: judged as counts, no alarm that the deviations alone did not raise
    assert ((as_counts[:2900] >= cfg.threshold) <= (plain[:2900] >= cfg.threshold)).all()


def test_rate_lower_takes_the_counting_noise_out_of_the_band():
    assert rate_lower(10.0, 10.0 - Z95 * np.sqrt(10.0)) == pytest.approx(10.0)  # a Poisson-wide band: the rate is known
    wide = rate_lower(10.0, 10.0 - Z95 * np.sqrt(10.0 + 4.0))  # two more units of rate uncertainty
    assert wide == pytest.approx(10.0 - Z95 * 2.0)
    assert rate_lower(0.0, -1.0) == 0.0 and rate_lower(1.0, -50.0) == 0.0


def test_a_record_deviation_is_priced_by_the_tail_of_the_largest_ones():
    """The same new record is far more surprising after light-tailed deviations than after
    heavy-tailed ones; with the fitted tail off, both get only the log-ratio excess."""
    rng = np.random.default_rng(6)
    light = sorted(np.abs(rng.normal(0, 1, 500)).tolist())
    heavy = sorted(np.abs(rng.standard_cauchy(500)).tolist())
    s_light, s_heavy = 1.5 * light[-1], 1.5 * heavy[-1]
    assert tail_excess(light, s_light, 0.1) > 3.0
    assert tail_excess(heavy, s_heavy, 0.1) < tail_excess(light, s_light, 0.1) / 2
    assert tail_excess(light, s_light, 0.0) == 0.0 and tail_excess(light[:100], s_light, 0.1) == 0.0
    assert tail_excess(light, light[-1], 0.1) == pytest.approx(0.0, abs=1e-12)


def test_a_record_after_deviations_heavier_tailed_than_exponential_is_priced_by_a_heavy_tail():
    """Moments read Student-t(3) deviations' tail as a light one; their 99th percentile beyond
    twice the 90th says otherwise, and the tail's shape is then at least ``HEAVY_TAIL_SHAPE``.
    Normal deviations, even with a short anomaly among them, are priced by the moments alone."""
    from scipy.stats import norm

    def priced(devs: list[float], s: float, shape_min: float = 0.0) -> float:  # the top tenth of 500 over the 450th
        excess = np.asarray(devs[450:]) - devs[449]
        return float(gpd_gap(np.float64(excess.mean()), np.float64(excess.var()), np.float64(s - devs[449]),
                             np.float64(devs[-1] - devs[449]), shape_min))

    rng = np.random.default_rng(11)
    ratios = []
    for _ in range(400):
        heavy = sorted(np.abs(rng.standard_t(3, 500)).tolist())
        s = 3 * heavy[-1]
        new = tail_excess(heavy, s, 0.1)
        if heavy[495] > 2 * heavy[449]:
            assert new == pytest.approx(priced(heavy, s, HEAVY_TAIL_SHAPE)) and new <= priced(heavy, s) + 1e-12
        else:
            assert new == pytest.approx(priced(heavy, s))
        ratios.append(new / priced(heavy, s))
    # the moments read about a fifth of these samples' tails as light ones: those records cost at most 0.6 as much now
    assert np.mean(np.asarray(ratios) < 0.6) > 0.12
    # normal deviations (their quantiles, so no draw decides) with three anomalous ones remembered
    normal = sorted([*norm.ppf(0.5 + 0.5 * (np.arange(497) + 0.5) / 497).tolist(), 8.0, 9.0, 10.0])
    assert normal[495] <= 2 * normal[449]
    assert priced(normal, 15.0) > 0 and tail_excess(normal, 15.0, 0.1) == pytest.approx(priced(normal, 15.0))


@pytest.mark.parametrize("counts", [False, True])
def test_warm_leaves_the_memory_a_full_replay_leaves(counts):
    from forewarn.detect import warm

    rng = np.random.default_rng(5)
    n = 1900
    mean = 20 + 10 * np.sin(np.arange(n) * 2 * np.pi / 288)
    actual = rng.poisson(mean).astype(float)
    actual[rng.random(n) < 0.03] = np.nan  # gaps are skipped, not counted
    actual[1500:1540] = 0.0  # a shortfall running to the end of what is remembered
    actual[-200:-150] = 0.0
    actual[-4:] = [3.0, 0.0, np.nan, 0.0]  # it ends in a run short of the rate
    actual[10] = 500.0  # the largest value, long before what the views remember
    cfg = DetectorConfig(min_history=288)
    _, _, full = score(actual, mean, mean - 9, mean + 9, None, cfg, counts=counts)
    full.clear_surprises()
    quick = warm(actual, mean, mean - 9, mean + 9, cfg, counts=counts)
    for view in (0, 1):
        assert quick.deviations(0, view) == pytest.approx(full.deviations(0, view), rel=1e-6)
    assert quick.recent_errors(0) == pytest.approx(full.recent_errors(0))
    assert np.allclose(quick.run(0), full.run(0)) and len(quick.run(0)) == len(full.run(0)) and (len(quick.run(0)) > 0) == counts
    for name in ("dev_pos", "err_pos", "run_len", "low", "high", "seen", "scored"):
        assert getattr(quick, name).tolist() == getattr(full, name).tolist(), name
    assert quick.high.tolist() == [500.0]

    def live(memory):  # the excursions the view judges against: those ended within the remembered deviations
        clock = int(memory.dev_pos[0])
        keep = (memory.exc_peaks[0] > 0) & (memory.exc_ends[0] > clock - min(clock, cfg.memory))
        return sorted(zip(memory.exc_ends[0][keep].tolist(), memory.exc_peaks[0][keep].tolist(), strict=True))

    assert live(quick) == live(full) and len(live(full)) > 0
    assert quick.exc_sum.tolist() == pytest.approx(full.exc_sum.tolist()) and quick.exc_peak.tolist() == pytest.approx(full.exc_peak.tolist())
    assert quick.exc_fired.tolist() == (quick.exc_sum > 0).tolist()  # an excursion under way counts as alerted
    short = warm(actual[:300], mean[:300], mean[:300] - 9, mean[:300] + 9, cfg, counts=counts)  # all of it replayed
    assert short.seen[0] == np.isfinite(actual[:300]).sum() and short.scored[0] == max(0, short.seen[0] - 288)


def test_many_series_at_once_judge_exactly_as_each_alone():
    """The comparison judges thousands of series in one vectorised pass: each row's verdicts and
    memory are those it gets alone, whatever the other rows hold (gaps, counts, cold starts)."""
    rng = np.random.default_rng(8)
    n, steps = 6, 700
    mean = 30 + 10 * np.sin(np.arange(steps) * 2 * np.pi / 288)[None, :] * rng.uniform(0.5, 2, (n, 1))
    actual = rng.poisson(mean).astype(float)
    actual[1, 500:520] = 0.0  # a silence
    actual[2, rng.random(steps) < 0.1] = np.nan  # gaps
    actual[3, 650] = 400.0  # a spike beyond everything
    mean[4, 300:400] = np.nan  # no forecast for a while
    counts = np.array([True, True, False, False, True, False])
    cfg = DetectorConfig(min_history=200)
    half = Z95 * np.sqrt(mean) + 1  # about as wide as counting noise
    together = Memory.empty(n, cfg)
    likelihood, z = score_many(actual, mean, mean - half, mean + half, together, cfg, counts)
    for i in range(n):
        alone, alone_z, memory = score(actual[i], mean[i], mean[i] - half[i], mean[i] + half[i], None, cfg, counts=bool(counts[i]))
        assert likelihood[i].tolist() == alone.tolist() and np.array_equal(z[i], alone_z, equal_nan=True)
        for name, a in memory.arrays().items():
            assert np.array_equal(getattr(together, name)[i], a[0], equal_nan=a.dtype.kind == "f"), name
    assert likelihood[1, 500:520].max() >= cfg.threshold and likelihood[3, 650] >= cfg.threshold


def irregular(seed: int, days: int = 21, drop: float = 0.3) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """A daily-seasonal sensor read about every 5 minutes: jittered by up to a minute, 30% of the
    reads missing, a six-hour outage of the feed and a burst of duplicate reads: its rows, values
    and the noiseless level at each row."""
    rng = np.random.default_rng(seed)
    t = np.arange(0, days * 86400, 300, dtype=float) + rng.uniform(-60, 60, days * 288)
    keep = rng.random(t.size) > drop
    keep[(t > 10 * 86400) & (t < 10 * 86400 + 6 * 3600)] = False
    t = np.sort(np.r_[t[keep], t[keep][-500:-480] + 1.0])  # some rows arrive twice a second apart
    level = 50 + 30 * np.sin(2 * np.pi * t / 86400)
    stamps = pd.Series(pd.to_datetime(1_780_000_000 + t, unit="s"))
    return stamps, level + rng.normal(0, 1.5, t.size), level


def test_time_is_time_in_the_replay_an_irregular_series_is_forecast_by_its_clock():
    stamps, y, level = irregular(0)
    mean, lower, upper, info = forecast_stream(stamps, y)
    assert info["grain_seconds"] == 300 and info["empty_buckets"] > 0.25 * info["buckets"]
    late = np.arange(y.size) > y.size * 0.6
    # seasonal lags by timestamp: the forecast follows the clock's daily cycle, not the row count
    assert np.nanmean(np.abs(mean[late] - level[late])) < 3
    inside = (y[late] >= lower[late]) & (y[late] <= upper[late])
    assert inside.mean() > 0.9


def test_an_irregular_clean_series_raises_no_alert_and_a_spike_is_caught_at_once():
    stamps, y, _ = irregular(1)
    spike = int(y.size * 0.8)
    y[spike] += 40
    likelihood = replay_stream(stamps, y).likelihood
    alert = np.flatnonzero(likelihood >= DetectorConfig().threshold)
    assert alert.tolist() == [spike]


def test_the_replay_keeps_an_anomaly_out_of_later_refits_as_training_does():
    """A four-hour collapse on day 20 of an hourly series: the next day's forecasts for those
    hours stay at the normal level in the replay (the whole episode is kept out, as
    forewarn_train keeps recorded episodes out, not only its first alarmed bucket), where
    learning every bucket throws them off."""
    rng = np.random.default_rng(3)
    n = 24 * 24
    t = np.arange(n)
    y = 100 + 20 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 2, n)
    onset = 20 * 24 + 10
    y[onset : onset + 4] = 10
    stamps = pd.Series(pd.date_range("2026-01-01", periods=n, freq="h"))
    kept = replay_stream(stamps, y)
    learnt = replay_stream(stamps, y, keep_out_episodes=False)
    assert kept.info["kept_out_buckets"] >= 4 and learnt.info["kept_out_buckets"] == 0
    assert (kept.likelihood[onset : onset + 4] >= DetectorConfig().threshold).any()
    next_day = slice(onset + 24, onset + 28)
    normal = 100 + 20 * np.sin(2 * np.pi * t[next_day] / 24)
    assert np.abs(kept.mean[next_day] - normal).max() < 10
    assert np.abs(learnt.mean[next_day] - normal).max() > 3 * np.abs(kept.mean[next_day] - normal).max()


def test_episode_spans_follow_the_comparisons_episode_rule():
    spans = EpisodeSpans(resolve_after=2, open_margin=3)
    buckets = np.array([0, 1, 1, 2, 3, 4, 5, 6, 7])
    hot = np.array([0, 1, 0, 0, 1, 0, 0, 0, 1], dtype=bool)
    calm = np.array([1, 0, 1, 0, 0, 1, 1, 1, 0], dtype=bool)
    # bucket 1 opens (one of its rows is anomalous, one not calm), 3 is its last anomalous and not calm,
    # 4 and 5 are calm: it ends there; bucket 7 opens another, still open at the refit (bucket 9)
    closed, still_open = spans.update(buckets, hot, calm, until=9)
    assert closed == [(1, 3)]
    assert still_open == (7, 8)


def test_a_run_of_somewhat_rare_deviations_alerts_once_by_the_excursion_view():
    """Forty buckets in a row about 2.3 spreads out (each alone within what the series shows a few
    times a day) raise one alert, from the excursion view; without it, none. Once that excursion
    has left the remembered deviations, a new one alerts again."""
    rng = np.random.default_rng(5)
    n = 2400
    actual = rng.normal(0.0, 1.0, n)
    actual[1500:1540] = 2.3 + rng.normal(0.0, 0.2, 40)
    actual[2150:2190] = -2.3 + rng.normal(0.0, 0.2, 40)
    band = np.full(n, Z95)
    for cfg, expected in ((DetectorConfig(), [1500, 2150]), (DetectorConfig(excursion_reference=0), [])):
        likelihood, z, memory = score(actual, np.zeros(n), -band, band, None, cfg)
        assert np.abs(z[1500:1540]).max() < 3.0 and np.abs(z[2150:2190]).max() < 3.0
        alert = likelihood >= cfg.threshold
        onsets = np.flatnonzero(alert & ~np.r_[False, alert[:-1]])
        assert [o // 50 * 50 for o in onsets] == expected, onsets  # one onset in each run's first buckets, none elsewhere
    assert memory.exc_peaks.shape == (1, max(cfg.memory // 8, 2 * cfg.excursion_min))


def test_the_excursion_view_alerts_once_at_each_rows_own_threshold_and_starts_afresh_after_a_gap():
    """A series whose settings raise its threshold gets the excursion's one alert there, not at
    the default (where it would have been spent); after a gap the comparison forgets the recent
    buckets, the excursion under way included."""
    rng = np.random.default_rng(5)
    n = 1540  # ending in the run
    actual = rng.normal(0.0, 1.0, n)
    actual[1500:1540] = 2.3 + rng.normal(0.0, 0.2, 40)
    band = np.full(n, Z95)
    cfg = DetectorConfig()
    for threshold in (cfg.threshold, 0.8):
        memory = Memory.empty(1, cfg)
        likelihood, _ = score_many(actual[None], np.zeros((1, n)), -band[None], band[None], memory, cfg,
                                   thresholds=np.array([threshold]))
        alert = likelihood[0] >= threshold
        onsets = np.flatnonzero(alert & ~np.r_[False, alert[:-1]])
        assert onsets.size == 1 and 1500 <= onsets[0] < 1520, (threshold, onsets)
    assert memory.exc_fired[0] and memory.exc_sum[0] > 0
    memory.forget_recent()
    assert not memory.exc_fired[0] and memory.exc_sum[0] == memory.exc_peak[0] == 0


def test_warm_takes_deviations_beyond_float32_without_a_warning():
    import warnings

    from forewarn.detect import warm

    actual = np.r_[np.zeros(400), 1e200, np.zeros(10)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        memory = warm(actual, np.zeros(actual.size), np.full(actual.size, -1e-300), np.full(actual.size, 1e-300))
        likelihood, _, _ = score(np.r_[1e200, 0.0], np.zeros(2), np.full(2, -1e-300), np.full(2, 1e-300), memory)
    assert np.isfinite(memory.devs).any() and ((likelihood >= 0) & (likelihood < 1)).all()


@pytest.mark.parametrize("tiny", [1e-30, 1e-300, 5e-324])
def test_a_tiny_value_after_a_memory_of_zeros_is_judged_not_a_crash(tiny):
    """A gauge that always read 0 against a forecast of 0 (a band of no width), then one valid
    but tiny value: its deviation is 0 in the memory's float32, so it is no record, and judging
    it must not fail (it did, with a math domain error, failing the whole comparison)."""
    actual = np.r_[np.zeros(600), tiny]
    zeros = np.zeros(actual.size)
    likelihood, z, _ = score(actual, zeros, zeros, zeros)
    assert np.isfinite(z[-1]) and 0 <= likelihood[-1] < 1
