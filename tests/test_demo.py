"""The demo's pieces that run without the stack or Airflow: the report it draws."""

from __future__ import annotations

import numpy as np
import pandas as pd

from forewarn.synth import Scenario, SeriesSpec


def test_report_ends_the_actual_line_at_the_last_complete_bucket(tmp_path):
    """The demo stops sending at ``now``, a minute into a bucket: that bucket holds a minute's
    events, and drawn it is a count falling to a fifth of its level at the right edge, which
    reads like an outage that no comparison judged. Both panels end at the bucket before it."""
    from forewarn.local.demo import plot_report

    grain = 300
    now = pd.Timestamp("2026-12-08T08:31:00Z")
    complete = pd.Timestamp("2026-12-08T08:25:00Z")  # the last bucket that had ended by now
    stamps = pd.date_range(now.floor(f"{grain}s") - pd.Timedelta(days=8), now, freq=f"{grain}s")
    assert stamps[-1] == pd.Timestamp("2026-12-08T08:30:00Z")  # the bucket still filling
    frames = []
    for name in ("orders.count", "warehouse.temp_c"):
        counts = np.full(stamps.size, 50)
        counts[-1] = 10  # its first minute only
        frames.append(pd.DataFrame({"series": name, "bucket_start": stamps, "grain_seconds": grain, "event_count": counts,
                                    "value_sum": counts * 6.0, "value_mean": 6.0, "value_stddev": 0.1, "value_p95": 6.2}))
    aggregates = pd.concat(frames, ignore_index=True)
    scenario = Scenario([SeriesSpec("orders.count"), SeriesSpec("warehouse.temp_c", kind="gauge")])
    ahead = pd.date_range(now.floor("D"), periods=24 * 12, freq=f"{grain}s")
    forecasts = pd.concat([pd.DataFrame({"series": name, "metric": metric, "bucket_start": ahead, "mean": 50.0,
                                         "lower_95": 40.0, "upper_95": 60.0})
                           for name, metric in (("orders.count", "event_count"), ("warehouse.temp_c", "value_mean"))])

    fig = plot_report(aggregates, scenario, (now - pd.Timedelta(minutes=70)).timestamp(), now.timestamp(),
                      tmp_path / "report.png", forecasts, [])

    assert (tmp_path / "report.png").stat().st_size > 0
    for spec, row in zip(scenario.series, np.reshape(fig.axes, (-1, 2)), strict=True):
        for ax in row:
            (actual,) = [line for line in ax.get_lines() if line.get_label() == "actual"]
            assert pd.to_datetime(actual.get_xdata()).max() == complete, spec.name
            if spec.kind == "count":
                assert np.min(actual.get_ydata()) == 50  # no drop to the filling bucket's 10
        (forecast,) = [line for line in row[1].get_lines() if line.get_label() == "forecast"]
        assert pd.to_datetime(forecast.get_xdata()).max() == complete  # the band as far as the actuals, no further
