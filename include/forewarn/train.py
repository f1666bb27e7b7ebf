"""Training: aggregates -> per series forecasts with calibrated bands -> Parquet on S3.

A run is keyed by the end of its data interval (``trained_until``, a day boundary): it reads the
aggregates of the ``training_days`` before it and forecasts ``horizon_hours`` after it. Every
object it writes sits under ``forecasts/run=<trained_until>/``, so a rerun rewrites the same
keys; the comparison finds the forecast for a bucket by the day the bucket falls in.

    forecasts/run=2026-11-27T00/training.parquet     the training data, gathered once
    forecasts/run=2026-11-27T00/batch=00000.parquet  forecasts of one batch of series
    forecasts/run=2026-11-27T00/models-00000.json    per series: model, validation MASE, warnings
    forecasts/run=2026-11-27T00/backtest-00000.parquet  out-of-sample forecasts of the window's end
    forecasts/run=2026-11-27T00/hourly/shard=000/hour=2026-11-27T05.parquet
                                                     one shard's forecasts for one hour (publish)
    forecasts/run=2026-11-27T00/_manifest.json       the batches and hourly objects, written last
"""

from __future__ import annotations

import fnmatch
import io
import json
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from forewarn.aggregate import parquet_bytes
from forewarn.blas import one_blas_thread
from forewarn.config import METRIC_MEANINGS, Settings
from forewarn.forecast import ForecastConfig, baseline_forecast, forecast
from forewarn.layout import (
    EPISODES_PREFIX,
    aggregate_key,
    batch_keys,
    hourly_key,
    manifest_key,
    masked_key,
    shard_of,
    training_key,
)
from forewarn.query import hour_range

log = logging.getLogger(__name__)

#: Metrics whose missing buckets mean zero (no events); the others are unknown when missing.
ZERO_WHEN_MISSING = {m for m, meaning in METRIC_MEANINGS.items() if meaning.zero_when_missing}


def forecast_config(settings: Settings) -> ForecastConfig:
    buckets_per_hour = 3600 // settings.grain_seconds
    return ForecastConfig.for_grain(settings.grain_seconds, horizon=settings.horizon_hours * buckets_per_hour)


def gather_training(settings: Settings, s3: Any, trained_until: datetime, pending: list[str] | None = None) -> dict[str, Any]:
    """Read the aggregate partitions of the training window and store them as one object.
    Hours whose partition is missing, and the ``pending`` ones (``hours_not_aggregated``: their
    aggregation has not run, whatever partition a range run that reached past its own time left
    there), are unknown to the forecaster."""
    start = trained_until - timedelta(days=settings.training_days)
    frames, absent = [], []
    hours = list(hour_range(start, trained_until))
    keys = [aggregate_key(settings, hour) for hour in hours]
    for hour, key in zip(hours, keys, strict=True):
        try:
            body = s3.get_object(Bucket=settings.bucket, Key=key)["Body"].read()
        except s3.exceptions.NoSuchKey:  # never aggregated (an hour with no events has an empty partition)
            absent.append(hour.isoformat())
            continue
        frames.append(pq.read_table(io.BytesIO(body)))
    table = pa.concat_tables(frames) if frames else None
    key = training_key(settings, trained_until)
    if table is None or table.num_rows == 0:
        series: list[str] = []
        s3.put_object(Bucket=settings.bucket, Key=key, Body=parquet_bytes(_empty_aggregates()))
    else:
        table = table.sort_by([("series", "ascending"), ("bucket_start", "ascending")])
        series = sorted(set(table.column("series").to_pylist()))
        s3.put_object(Bucket=settings.bucket, Key=key, Body=parquet_bytes(table))
    # hours before the first partition are before anything was aggregated (a young deployment):
    # no series exists there yet, nothing is unknown
    gaps = set(absent)
    first = next((h.isoformat() for h in hours if h.isoformat() not in gaps), None)
    absent = [h for h in absent if first is not None and h > first]
    missing = len(absent)
    if missing:
        log.warning("%d of %d hourly aggregate partitions are missing in the training window (%s%s): those hours are "
                    "unknown to the forecaster, filled from the season before, not learnt as zero events; re-aggregate "
                    "them (forewarn_aggregate with since/until) and rerun training to learn them", missing, len(keys),
                    ", ".join(absent[:5]), ", ..." if missing > 5 else "")
    # each batch regrids its own series (``regrid``); the run says so once, here, for all of them
    regridded = other_grains(table, settings.grain_seconds)
    if regridded["series"]:
        log.warning("aggregates at another grain than %d s in the training window: %d series; %d rows in %d hour(s) "
                    "combined onto it, %d hour(s) unknown (coarser, or a grain that does not divide it); re-aggregate "
                    "the window (forewarn_aggregate with since/until) to train on the new grain", settings.grain_seconds,
                    regridded["series"], regridded["combined_rows"], regridded["combined_hours"], regridded["unknown_hours"])
    masks = training_masks(settings, s3, start, trained_until)
    masks["missing_hours"] = sorted(set(absent) | set(pending or []))
    s3.put_object(Bucket=settings.bucket, Key=masked_key(settings, trained_until), Body=json.dumps(masks, sort_keys=True).encode())
    return {"training_uri": settings.s3_uri(key), "series": series, "missing_partitions": missing, "hours": len(keys),
            "masked_spans": len(masks["spans"]), "learnt_by_label": masks["learnt_by_label"], "rebased": len(masks["rebase"]),
            "maintenance_stretches": len(masks["windows"]),
            "label_errors": len(masks["label_errors"]), "regridded": regridded}


def hours_not_aggregated(settings: Settings, s3: Any, trained_until: datetime) -> list[str]:
    """The hours of the day before ``trained_until`` whose aggregation has not run yet
    (``aggregate.aggregated_hours``; ISO, in order): what training waits for. Hours before the
    first one of the training window that was aggregated are before the aggregation began (a
    young deployment), and with none aggregated there is nothing to wait for; older gaps of the
    window are not waited for either (``gather_training`` reports them)."""
    from forewarn.aggregate import aggregated_hours

    done = aggregated_hours(settings, s3, trained_until - timedelta(days=settings.training_days), trained_until)
    if not done:
        return []
    day = max(trained_until - timedelta(days=1), min(done))
    return [hour.isoformat() for hour in hour_range(day, trained_until) if hour not in done]


def training_masks(settings: Settings, s3: Any, start: datetime, until: datetime) -> dict[str, Any]:
    """What the run keeps out of its window and what it rebases: the recorded episodes' spans,
    less those labelled ``not_anomaly`` or ``expected`` (learnt) or ``new_normal`` (rebased
    instead), plus the ranges labelled ``real`` on a series; the maintenance windows' stretches
    (kept out of every series their pattern matches); and, per series labelled ``new_normal``,
    when its new level began."""
    from forewarn.labels import LEARNT, read_labels, verdict
    from forewarn.maintenance import read_windows, window_stretches

    labels, errors = read_labels(settings, s3)
    windows, window_errors = read_windows(settings, s3)
    spans, learnt, rebase = [], 0, {}
    for span in episode_spans(settings, s3, start, until):
        label = verdict(labels, span["series"], datetime.fromisoformat(span["first"]), datetime.fromisoformat(span["last"]),
                        span["episode"])
        if label is not None and label.kind in LEARNT:
            learnt += 1
            continue
        if label is not None and label.kind == "new_normal":
            rebase[span["series"]] = (label.start or datetime.fromisoformat(span["started"])).isoformat()
            continue
        spans.append(span)
    last = until - timedelta(seconds=1)
    for label in labels:
        if label.episode is None and label.kind == "real" and label.start is not None:
            first, end = max(label.start, start), min(label.end or until, until) - timedelta(seconds=1)
            if first <= end:
                spans.append({"episode": None, "series": label.series, "metrics": ["*"], "first": first.isoformat(),
                              "last": end.isoformat(), "label": label.key})
        elif label.episode is None and label.kind == "new_normal" and label.start is not None and start < label.start <= last:
            rebase[label.series] = label.start.isoformat()
    stretches = window_stretches(windows, start, last)
    recurring = recurring_spans(settings, s3, labels)
    return {"version": 2, "spans": sorted(spans, key=lambda r: (r["series"], r["first"])), "rebase": dict(sorted(rebase.items())),
            "windows": stretches, "recurring": recurring, "learnt_by_label": learnt, "label_errors": errors + window_errors}


def recurring_spans(settings: Settings, s3: Any, labels: list[Any]) -> list[dict[str, Any]]:
    """Per ``expected`` label that ``recurs``: its series, one occurrence (the labelled
    episode's span, from its record, or the label's ``from``/``to``) and the period."""
    from forewarn.labels import RECURRENCES

    out = []
    for label in labels:
        if label.kind != "expected" or not label.recurs:
            continue
        if label.episode is None:
            first, last = label.start, label.end - timedelta(seconds=1)
        else:
            record = _episode_record(settings, s3, label.episode)
            if record is None:
                log.warning("recurring label on %s: no record of that episode; not applied", label.episode)
                continue
            first = datetime.fromisoformat(record["started"])
            last = datetime.fromisoformat(record["last_anomalous"])
            if record.get("ended"):
                last = max(last, datetime.fromisoformat(record["ended"]) - settings.resolve_after * timedelta(seconds=settings.grain_seconds))
        if (last - first).total_seconds() >= RECURRENCES[label.recurs]:
            log.warning("recurring label on %s: its episode (%s to %s) is not shorter than its period; not applied",
                        label.target, first.isoformat(), last.isoformat())
            continue
        out.append({"series": label.series, "first": first.isoformat(), "last": last.isoformat(),
                    "period_seconds": RECURRENCES[label.recurs], "label": label.key})
    return sorted(out, key=lambda r: (r["series"], r["first"]))


def _episode_record(settings: Settings, s3: Any, episode: str) -> dict[str, Any] | None:
    """The comparison's record of one episode (its id names the day it started), if any."""
    try:
        day = datetime.fromisoformat(episode.split("|", 1)[1]).replace(tzinfo=UTC)
    except ValueError:
        return None
    prefix = f"{EPISODES_PREFIX}started={day:%Y-%m-%d}/"
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=settings.bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            record = json.loads(s3.get_object(Bucket=settings.bucket, Key=obj["Key"])["Body"].read())
            if record.get("episode") == episode:
                return record
    return None


def _clock(times: Any, tz: str | None) -> Any:
    """Timestamps as the wall clock of ``tz`` reads them (naive), or as they are (UTC)."""
    return times if not tz else times.tz_convert(tz).tz_localize(None)


def recurrences(occurrence: dict[str, Any], index: pd.DatetimeIndex, tz: str | None = None) -> np.ndarray:
    """Which buckets of ``index`` fall in the occurrence or one of its recurrences (before or
    after it), stepping by the period on the wall clock of ``tz`` when given (a batch at 02:00
    local time stays at 02:00 across daylight-saving changes)."""
    first, last = _clock(pd.Timestamp(occurrence["first"]), tz), _clock(pd.Timestamp(occurrence["last"]), tz)
    index = _clock(index, tz)
    period = pd.Timedelta(seconds=occurrence["period_seconds"])
    k = np.floor((index - first) / period)
    return np.asarray((index - k * period) <= last, dtype=bool)


#: How long before the training window an episode that reaches into it may have started.
EPISODE_REACH = timedelta(days=7)
#: An episode still open is kept out this long after the last anomalous bucket its record says
#: (the comparison rewrites the record each hour it grows).
OPEN_EPISODE_MARGIN = timedelta(hours=1)


def episode_spans(settings: Settings, s3: Any, start: datetime, until: datetime, workers: int = 8) -> list[dict[str, Any]]:
    """The anomalous spans that reach into ``[start, until)`` (``episodes/``, written by the
    comparison; read ``workers`` at a time), clipped to it: per series, the metrics that
    deviated and the first and last bucket to keep out of training: an ended episode to its last
    bucket outside the 99% band (the one before the calm buckets that ended it; a persisting
    deviation is past the detector's first alarm, not anomalous bucket by bucket, and still not
    normal), one still open to an hour after its record's last anomalous bucket."""
    grain = timedelta(seconds=settings.grain_seconds)
    keys = []
    day = day_floor(start - EPISODE_REACH)
    while day < until:
        prefix = f"{EPISODES_PREFIX}started={day:%Y-%m-%d}/"
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=settings.bucket, Prefix=prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        day += timedelta(days=1)

    def read(key: str) -> dict[str, Any]:
        return json.loads(s3.get_object(Bucket=settings.bucket, Key=key)["Body"].read())

    if len(keys) > 1 and workers > 1:
        with ThreadPoolExecutor(min(workers, len(keys))) as pool:
            records = list(pool.map(read, keys))
    else:
        records = [read(key) for key in keys]
    out = []
    for record in records:
        first = datetime.fromisoformat(record["started"])
        last = datetime.fromisoformat(record["last_anomalous"])
        if not record.get("ended"):  # still open: rewritten at least hourly while it grows
            last += OPEN_EPISODE_MARGIN
        else:  # ended by resolve_after calm buckets: every bucket before them deviated
            last = max(last, datetime.fromisoformat(record["ended"]) - settings.resolve_after * grain)
        if last < start or first >= until:
            continue
        out.append({"episode": record["episode"], "series": record["series"], "metrics": record["metrics"],
                    "started": record["started"], "first": max(first, start).isoformat(),
                    "last": min(last, until - timedelta(seconds=1)).isoformat()})
    return sorted(out, key=lambda r: (r["series"], r["first"]))


def read_masks(settings: Settings, s3: Any, trained_until: datetime) -> dict[str, Any]:
    """The run's kept-out spans by series and its rebased series (none for a run gathered before
    they were kept)."""
    try:
        doc = json.loads(s3.get_object(Bucket=settings.bucket, Key=masked_key(settings, trained_until))["Body"].read())
    except s3.exceptions.NoSuchKey:
        doc = {}
    return masks_by_series(doc)


def masks_by_series(doc: dict[str, Any]) -> dict[str, Any]:
    """``training_masks``' document as ``fit_batch`` reads it: spans and recurrences by series."""
    spans: dict[str, list[dict[str, Any]]] = {}
    for span in doc.get("spans", []):
        spans.setdefault(span["series"], []).append(span)
    recurring: dict[str, list[dict[str, Any]]] = {}
    for occurrence in doc.get("recurring") or []:
        recurring.setdefault(occurrence["series"], []).append(occurrence)
    return {"spans": spans, "rebase": dict(doc.get("rebase") or {}), "windows": list(doc.get("windows") or []),
            "recurring": recurring, "missing_hours": list(doc.get("missing_hours") or [])}


def _empty_aggregates() -> pa.Table:
    from forewarn.aggregate import AGGREGATE_SCHEMA

    return AGGREGATE_SCHEMA.empty_table()


def batches(series: list[str], batch_size: int, shards: int = 1) -> list[list[str]]:
    """Training batches of at most ``batch_size`` series, each within one comparison shard
    (``layout.shard_of``), so a shard's comparison reads only its own batches."""
    if shards <= 1:
        return [series[i : i + batch_size] for i in range(0, len(series), batch_size)]
    by_shard: dict[int, list[str]] = {}
    for name in series:
        by_shard.setdefault(shard_of(name, shards), []).append(name)
    return [part[i : i + batch_size] for _, part in sorted(by_shard.items()) for i in range(0, len(part), batch_size)]


def batch_size_within(series: list[str], batch_size: int, shards: int, max_batches: int) -> int:
    """The smallest batch size from ``batch_size`` on that cuts ``series`` into at most
    ``max_batches`` batches (``batches``): Airflow maps at most ``[core] max_map_length`` fit
    tasks. Raises ValueError when the comparison shards that hold series are more than that
    (batches lie within shards)."""
    counts = [len(series)] if shards <= 1 else list(Counter(shard_of(name, shards) for name in series).values())

    def count(size: int) -> int:
        return sum(-(-n // size) for n in counts)

    if count(batch_size) <= max_batches:
        return batch_size
    if len(counts) > max_batches:
        raise ValueError(f"{len(counts)} comparison shards hold series and each needs a training batch of its own, more "
                         f"than Airflow maps ([core] max_map_length = {max_batches}): raise max_map_length to at least "
                         f"{len(counts)}, or lower compare_shards")
    low, high = batch_size + 1, max(counts)  # count(high) is one a shard: within the limit
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if count(mid) <= max_batches else (mid + 1, high)
    return low


def combinable(grains: np.ndarray, grain_seconds: int) -> np.ndarray:
    """Which grains ``regrid`` combines onto ``grain_seconds``: the finer ones that divide it."""
    return (grains < grain_seconds) & (grain_seconds % grains == 0)


def other_grains(table: pa.Table | None, grain_seconds: int) -> dict[str, int]:
    """What ``regrid`` does to the whole training window, counted once for the run (each batch
    regrids only its own series, and a warning from each repeated itself once per batch): the
    series with aggregates at another grain than ``grain_seconds``, the rows and hours combined
    onto it, and the hours left unknown."""
    import pyarrow.compute as pc

    counts = {"series": 0, "combined_rows": 0, "combined_hours": 0, "unknown_hours": 0}
    if table is None or "grain_seconds" not in table.column_names:
        return counts
    other = table.filter(pc.not_equal(table.column("grain_seconds"), grain_seconds))
    if not other.num_rows:
        return counts
    old = other.select(["series", "bucket_start", "grain_seconds"]).to_pandas()
    finer = combinable(old["grain_seconds"].to_numpy(), grain_seconds)
    hours = pd.DatetimeIndex(old["bucket_start"]).floor("h")
    counts.update(series=int(old["series"].nunique()), combined_rows=int(finer.sum()), combined_hours=int(hours[finer].nunique()),
                  unknown_hours=int(hours[~finer].nunique()))
    return counts


def regrid(frame: pd.DataFrame, grain_seconds: int) -> tuple[pd.DataFrame, pd.DatetimeIndex]:
    """Aggregates written at another grain (before ``grain_seconds`` changed) on the current
    grid: rows at a finer grain that divides it are combined (counts and sums added, the mean
    from them, the standard deviation pooled, the 95th percentile the largest of the parts', an
    upper estimate); the hours of rows that cannot be (a coarser grain, or one that does not
    divide it) are returned as unknown, for training to treat as never aggregated. Without this a
    grid of the new grain keeps only the old buckets that fall on it and reads their counts as
    counts of the longer bucket."""
    none = pd.DatetimeIndex([], tz="UTC")
    if frame.empty or "grain_seconds" not in frame:
        return frame, none
    other = frame["grain_seconds"].to_numpy() != grain_seconds
    if not other.any():
        return frame, none
    old = frame[other]
    finer = combinable(old["grain_seconds"].to_numpy(), grain_seconds)
    unknown = pd.DatetimeIndex(old.loc[~finer, "bucket_start"]).floor("h").unique()
    parts = [frame[~other]]
    if finer.any():
        rows = old[finer]
        n = rows["event_count"].to_numpy(dtype=float)
        mean, sd = rows["value_mean"].to_numpy(dtype=float), np.nan_to_num(rows["value_stddev"].to_numpy(dtype=float))
        rows = rows.assign(bucket_start=rows["bucket_start"].dt.floor(f"{grain_seconds}s"),
                           _squares=np.maximum(n - 1, 0) * sd * sd + n * np.nan_to_num(mean) ** 2)  # the sum of x^2
        combined = rows.groupby(["series", "bucket_start"], as_index=False, sort=False).agg(
            event_count=("event_count", "sum"), value_sum=("value_sum", "sum"), _squares=("_squares", "sum"),
            value_p95=("value_p95", "max"))
        count = combined["event_count"].to_numpy(dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, combined["value_sum"].to_numpy(dtype=float) / count, np.nan)
            var = (combined["_squares"].to_numpy() - count * mean * mean) / (count - 1)
        combined["value_mean"] = mean
        combined["value_stddev"] = np.where(count > 1, np.sqrt(np.maximum(var, 0.0)), np.nan)
        combined["grain_seconds"] = grain_seconds
        parts.append(combined.drop(columns="_squares"))
    # not a warning here: every batch of the run would repeat it (gather_training says it once)
    log.debug("%d rows combined onto %d s, %d hour(s) unknown", int(finer.sum()), grain_seconds, unknown.size)
    out = pd.concat(parts, ignore_index=True)
    return out.sort_values(["series", "bucket_start"], kind="stable").reset_index(drop=True), unknown


def series_matrix(frame: pd.DataFrame, metric: str, index: pd.DatetimeIndex) -> pd.DataFrame:
    """One column per series on the full bucket grid; missing buckets are 0 for counts and sums,
    NaN (filled by the forecaster) for the other statistics."""
    wide = frame.pivot_table(index="bucket_start", columns="series", values=metric, aggfunc="first")
    wide = wide.reindex(index)
    if metric in ZERO_WHEN_MISSING:
        wide = wide.fillna(0.0)
    return wide


def rebase_history(values: np.ndarray, index: pd.DatetimeIndex, at: pd.Timestamp, grain_seconds: int,
                   multiplicative: bool) -> tuple[np.ndarray, float | None]:
    """A history whose level changed for good at ``at`` (a ``new_normal`` label), with the part
    before it moved to the new level, so the forecast takes it at once: the buckets since ``at``
    against the same buckets a day earlier give the factor (counts and sums: a ratio) or the
    shift (other statistics). Returns the history and the factor or shift (None when there is
    nothing after ``at``, or no day before it, to measure it on)."""
    day = 86400 // grain_seconds
    after = np.flatnonzero(index >= at)
    after = after[after >= day]
    if after.size == 0:
        return values, None
    now, before = values[after], values[after - day]
    ok = np.isfinite(now) & np.isfinite(before)
    if not ok.any():
        return values, None
    out = values.copy()
    cut = int(after[0])
    if multiplicative:
        base = float(before[ok].sum())
        if base <= 0:
            return values, None
        factor = float(now[ok].sum()) / base
        out[:cut] = values[:cut] * factor
    else:
        factor = float(np.median(now[ok] - before[ok]))
        out[:cut] = values[:cut] + factor
    return out, round(factor, 4)


def zoned_forecast(history: np.ndarray, index: pd.DatetimeIndex, future: pd.DatetimeIndex, tz: str,
                   cfg: ForecastConfig) -> Any:
    """The forecast of a series whose seasons follow the clock of ``tz`` (a shop that opens at
    08:00 local time, winter and summer): the history (on UTC ``index``) is laid on a grid of
    local wall-clock buckets (the hour a daylight-saving change repeats is averaged, the one it
    skips is missing), forecast there, and read back at the UTC ``future`` buckets' local
    times; the backtest goes back to UTC positions of ``index``. So the daily and weekly lags
    compare like local hours and a DST change is not a shift of the series."""
    from datetime import timedelta as _td
    from zoneinfo import ZoneInfo

    from forewarn.forecast import Forecast

    zone = ZoneInfo(tz)
    grain = index.freq or (index[1] - index[0])
    wall = index.tz_convert(zone).tz_localize(None)
    grid = pd.date_range(wall[0], wall[-1], freq=grain)
    local = pd.Series(history, index=wall).groupby(level=0).mean().reindex(grid).to_numpy(dtype=float)
    extra = max(int(_td(hours=1) / grain), 1)  # a spring-forward day is an hour longer in wall-clock buckets
    start = grid[-1] + grain
    offset = int((start - start.normalize()) // grain) % cfg.season  # the local time of day the forecast starts at
    fc = forecast(local, replace(cfg, horizon=cfg.horizon + extra, day_offset=offset))
    steps = np.clip(((future.tz_convert(zone).tz_localize(None) - start) // grain).to_numpy(dtype=np.int64), 0, fc.mean.size - 1)
    backtest = None
    if fc.backtest is not None and len(fc.backtest):
        at = pd.DatetimeIndex(grid[fc.backtest[:, 0].astype(int)]).tz_localize(zone, ambiguous="NaT", nonexistent="NaT")
        position = index.get_indexer(at.tz_convert("UTC"))
        keep = position >= 0
        backtest = fc.backtest[keep].copy()
        backtest[:, 0] = position[keep]
    return Forecast(mean=fc.mean[steps], lower={k: v[steps] for k, v in fc.lower.items()},
                    upper={k: v[steps] for k, v in fc.upper.items()}, model=fc.model,
                    warnings=[*fc.warnings, f"seasons in {tz} local time"], calibration=fc.calibration,
                    validation_mase=fc.validation_mase, backtest=backtest)


def recurring_band(values: np.ndarray, index: pd.DatetimeIndex, future: pd.DatetimeIndex, planned: list[dict[str, Any]],
                   fc: Any, tz: str | None = None) -> int:
    """Widen, in place, the bands of ``fc`` over the recurrences ahead of expected, recurring
    deviations so they hold what the latest occurrence in the history (``values`` on ``index``,
    as it was, not kept out) did at the same point of it, with the model's band scaled to it.
    Returns how many buckets were widened."""
    from forewarn.calendars import hold_value

    fc.lower, fc.upper = {k: v.copy() for k, v in fc.lower.items()}, {k: v.copy() for k, v in fc.upper.items()}
    local, ahead = _clock(index, tz), _clock(future, tz)
    position = {t: i for i, t in enumerate(local)}
    widened = 0
    for occurrence in planned:
        period = pd.Timedelta(seconds=occurrence["period_seconds"])
        for i in np.flatnonzero(recurrences(occurrence, future, tz)):
            back = ahead[i] - period
            while back >= local[0] and (back not in position or not np.isfinite(values[position[back]])):
                back -= period
            if back < local[0]:
                continue
            hold_value(fc.lower, fc.upper, int(i), float(fc.mean[i]), float(values[position[back]]), keep_widths=False)
            widened += 1
    return widened


@one_blas_thread  # the task is the parallelism (forewarn.blas)
def fit_batch(
    settings: Settings, s3: Any, trained_until: datetime, training: pd.DataFrame, batch_no: int, names: list[str],
    masks: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Forecast every metric of every series in the batch; write the forecasts and the model
    metadata. A series that fails to fit gets the robust baseline, never a failed run. The
    buckets of past alert episodes (``masks``, default: the run's ``masked.json``) are kept out
    of each history: set missing, so the forecaster fills them from the season before."""
    cfg = forecast_config(settings)
    grain = pd.Timedelta(seconds=settings.grain_seconds)
    until = pd.Timestamp(trained_until).tz_convert("UTC")
    index = pd.date_range(until - pd.Timedelta(days=settings.training_days), until, freq=grain, inclusive="left")
    future = pd.date_range(until, periods=cfg.horizon, freq=grain)
    levels = cfg.levels
    rows: list[pd.DataFrame] = []
    backtests: list[pd.DataFrame] = []
    models: list[dict[str, Any]] = []
    subset, regridded_unknown = regrid(training[training["series"].isin(names)], settings.grain_seconds)
    # A series exists from its first bucket: earlier buckets are not zeros, they are before it.
    first_seen = subset.groupby("series")["bucket_start"].min()
    masks = read_masks(settings, s3, trained_until) if masks is None else masks
    from forewarn.series_settings import SeriesSettingsError, applied, read_series_settings

    try:
        rules = read_series_settings(settings, s3)
    except SeriesSettingsError as err:  # the comparison fails on it and says so; training goes on with the default model
        log.warning("per-series settings not used for the model choice: %s", err)
        rules = []
    per_series = {name: applied(rules, name) for name in names} if rules else {}
    chosen = {name: a.model for name, a in per_series.items()}
    calendars = {name: a.calendar for name, a in per_series.items() if a.calendar}
    zones = {name: a.tz for name, a in per_series.items() if a.tz and a.tz != "UTC"}
    on_holiday = {name: cal.on_holiday(index) for name, cal in calendars.items()}
    # hours whose aggregate partition was never written: unknown, not zero events
    absent = pd.DatetimeIndex(pd.to_datetime(masks.get("missing_hours") or [], utc=True)).union(regridded_unknown)
    unknown = index.floor("h").isin(absent) if absent.size else np.zeros(index.size, dtype=bool)
    masked: dict[tuple[str, str], int] = {}
    unaggregated: dict[tuple[str, str], int] = {}
    holiday_kept_out: dict[tuple[str, str], int] = {}
    holiday_widened: dict[tuple[str, str], int] = {}
    planned_widened: dict[tuple[str, str], int] = {}
    rebased: dict[tuple[str, str], float] = {}
    started = time.perf_counter()
    for metric in settings.metric_list:
        wide = series_matrix(subset, metric, index)
        for name in names:
            first = max(0, int(index.get_indexer([first_seen[name]])[0])) if name in first_seen.index else index.size
            values = wide[name].to_numpy(dtype=float) if name in wide else np.full(index.size, np.nan)
            hidden = np.zeros(index.size, dtype=bool)
            windows = [w for w in masks.get("windows", []) if fnmatch.fnmatchcase(name, w["pattern"])]
            for span in masks["spans"].get(name, []) + [{**w, "metrics": ["*"]} for w in windows]:
                if metric in span["metrics"] or "*" in span["metrics"]:
                    hidden |= (index >= pd.Timestamp(span["first"])) & (index <= pd.Timestamp(span["last"]))
            raw = values
            planned = masks.get("recurring", {}).get(name, [])
            for occurrence in planned:  # an expected, recurring deviation: not learnt, expected again
                hidden |= recurrences(occurrence, index, zones.get(name))
            if name in on_holiday and on_holiday[name][first:].any():  # a holiday is not an ordinary day to learn
                hidden |= on_holiday[name]
                holiday_kept_out[(name, metric)] = int(on_holiday[name][first:].sum())
            if hidden[first:].any():  # an episode's buckets: filled from the season before, not learnt
                values = values.copy()
                values[hidden] = np.nan
                masked[(name, metric)] = int(hidden[first:].sum())
            if unknown[first:].any():  # never aggregated: as unknown as a kept-out bucket
                values = values.copy()
                values[unknown] = np.nan
                unaggregated[(name, metric)] = int(unknown[first:].sum())
            if name in masks["rebase"]:
                values, factor = rebase_history(values, index, pd.Timestamp(masks["rebase"][name]), settings.grain_seconds,
                                                multiplicative=metric in ZERO_WHEN_MISSING)
                if factor is not None:
                    rebased[(name, metric)] = factor
            history = values[first:] if name in wide else np.array([])
            try:
                model_cfg = replace(cfg, model=chosen[name]) if chosen.get(name) else cfg
                if name in zones and history.size:
                    fc = zoned_forecast(history, index[first:], future, zones[name], model_cfg)
                else:
                    fc = forecast(history, model_cfg)
            except Exception as err:  # noqa: BLE001 - one series never fails the run; recorded below
                fc = baseline_forecast(np.nan_to_num(history), cfg, tuple(levels), f"forecast failed ({err!r}); seasonal naive used")
            if name in calendars:  # a holiday ahead may behave like a Sunday: the band holds both
                from forewarn.calendars import sunday_band

                fc.lower, fc.upper = {k: v.copy() for k, v in fc.lower.items()}, {k: v.copy() for k, v in fc.upper.items()}
                widened = sunday_band(values[first:], index[first:], future, calendars[name], fc.mean, fc.lower, fc.upper)
                if widened:
                    holiday_widened[(name, metric)] = widened
            if planned:
                widened = recurring_band(raw[first:], index[first:], future, planned, fc, zones.get(name))
                if widened:
                    planned_widened[(name, metric)] = widened
            part = {"series": name, "metric": metric, "bucket_start": future, "step": np.arange(1, cfg.horizon + 1), "mean": fc.mean}
            for lv in levels:
                tag = int(round(lv * 100))
                part[f"lower_{tag}"] = fc.lower[lv]
                part[f"upper_{tag}"] = fc.upper[lv]
            rows.append(pd.DataFrame(part))
            if fc.backtest is not None:
                backtests.append(backtest_frame(name, metric, index[first:], fc.backtest, history))
            models.append(
                {
                    "series": name,
                    "metric": metric,
                    "model": fc.model,
                    "history_points": int(history.size),
                    "validation_mase": None if fc.validation_mase is None else round(fc.validation_mase, 4),
                    "calibration": {str(k): round(v, 3) for k, v in fc.calibration.items()},
                    "warnings": fc.warnings,
                    "masked_buckets": masked.get((name, metric), 0),
                    "unaggregated_buckets": unaggregated.get((name, metric), 0),
                    "rebased": rebased.get((name, metric)),
                    "holiday_buckets_kept_out": holiday_kept_out.get((name, metric), 0),
                    "holiday_buckets_widened": holiday_widened.get((name, metric), 0),
                    "planned_buckets_widened": planned_widened.get((name, metric), 0),
                }
            )
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    table["model"] = np.repeat([m["model"] for m in models], cfg.horizon) if rows else []
    table["trained_until"] = until
    if rows:  # in time order, an hour of buckets per row group: a comparison decodes only the hours it judges
        table = table.sort_values(["bucket_start", "series", "metric"], kind="stable").reset_index(drop=True)
    per_hour = max(1, len(models) * max(1, 3600 // settings.grain_seconds))
    keys = batch_keys(settings, trained_until, batch_no)
    key = keys["forecasts"]
    s3.put_object(Bucket=settings.bucket, Key=key,
                  Body=parquet_bytes(pa.Table.from_pandas(table, preserve_index=False), row_group_size=per_hour))
    backtest_key = keys["backtest"]
    backtest = pd.concat(backtests, ignore_index=True) if backtests else backtest_frame("", "", index, np.empty((0, 5)), np.empty(0))
    s3.put_object(Bucket=settings.bucket, Key=backtest_key, Body=parquet_bytes(pa.Table.from_pandas(backtest, preserve_index=False)))
    meta_key = keys["models"]
    s3.put_object(Bucket=settings.bucket, Key=meta_key, Body=json.dumps(models, indent=1, sort_keys=True).encode())
    elapsed = time.perf_counter() - started
    log.info("batch %d: %d series x %d metrics in %.1f s", batch_no, len(names), len(settings.metric_list), elapsed)
    return {"batch": batch_no, "shard": shard_of(names[0], settings.compare_shards) if names else 0,
            "uri": settings.s3_uri(key), "models_uri": settings.s3_uri(meta_key),
            "backtest_uri": settings.s3_uri(backtest_key), "fits": len(models),
            "by_model": _count(m["model"] for m in models), "masked_buckets": sum(masked.values()), "rebased": len(rebased),
            "missing_partitions": len(masks.get("missing_hours") or [])}


#: The forecast columns a comparison reads.
FORECAST_COLUMNS = ["series", "metric", "bucket_start", "mean", "lower_95", "upper_95"]
#: Version of the run manifest. 1: batches only (until 2026-12); 2: with ``version`` and the
#: hourly objects of each shard (``hourly``).
MANIFEST_VERSION = 2


def write_hourly(settings: Settings, s3: Any, trained_until: datetime, results: list[dict[str, Any]],
                 workers: int = 8) -> dict[str, dict[str, str]]:
    """Regroup the batches' forecasts by comparison shard and hour: per shard, one object per
    hour of the horizon (every series of the shard, sorted by series and metric). A 5-minute
    comparison then reads one object of a few megabytes (two across an hour) where it read every
    batch of its shard (200 at 10,000 series). Returns shard -> hour (ISO) -> key; a shard is
    read whole once here, about 65 bytes a forecast row (400 MB at 10,000 series x 2 metrics)."""
    import pyarrow.compute as pc

    out: dict[str, dict[str, str]] = {}
    for shard in range(settings.compare_shards):
        uris = [r["uri"] for r in results if r.get("shard", 0) == shard]
        table = read_parquet_uris(s3, uris, FORECAST_COLUMNS) if uris else pa.table({})
        out[str(shard)] = {}
        if not table.num_rows:
            continue
        hours = pc.floor_temporal(table.column("bucket_start"), unit="hour")
        writes = []
        for hour in pc.unique(hours).to_pylist():
            part = table.filter(pc.equal(hours, pa.scalar(hour, hours.type)))
            part = part.sort_by([("series", "ascending"), ("metric", "ascending"), ("bucket_start", "ascending")])
            key = hourly_key(settings, trained_until, shard, hour)
            out[str(shard)][hour.astimezone(UTC).isoformat()] = key
            writes.append((key, part))
        with ThreadPoolExecutor(max(1, min(workers, len(writes)))) as pool:
            list(pool.map(lambda kv: s3.put_object(Bucket=settings.bucket, Key=kv[0], Body=parquet_bytes(kv[1])), writes))
        del table, hours, writes
    return out


def write_manifest(settings: Settings, s3: Any, trained_until: datetime, results: list[dict[str, Any]],
                   not_aggregated: list[str] | None = None) -> dict[str, Any]:
    """Written last: a run's forecasts are complete exactly when the manifest exists.
    ``not_aggregated``: the hours of the trained day whose aggregation had not run when the run
    gathered its data (``hours_not_aggregated``)."""
    results = sorted(results, key=lambda r: r["batch"])
    hourly = write_hourly(settings, s3, trained_until, results)
    by_model: dict[str, int] = {}
    for r in results:
        for model, n in r["by_model"].items():
            by_model[model] = by_model.get(model, 0) + n
    manifest = {
        "version": MANIFEST_VERSION,
        "trained_until": trained_until.isoformat(),
        "training_days": settings.training_days,
        "horizon_hours": settings.horizon_hours,
        "grain_seconds": settings.grain_seconds,
        "metrics": settings.metric_list,
        "batches": [r["uri"] for r in results],
        "models": [r["models_uri"] for r in results],
        "backtests": [r["backtest_uri"] for r in results],
        # each comparison shard's batches (positions in the lists above), for that shard count
        "shard_count": settings.compare_shards,
        "shards": {str(k): [i for i, r in enumerate(results) if r.get("shard", 0) == k] for k in range(settings.compare_shards)},
        # shard -> hour -> one object of that shard's forecasts for the hour
        "hourly": hourly,
        "fits": sum(r["fits"] for r in results),
        # buckets of past alert episodes kept out of the histories (series x metric x bucket)
        "masked_buckets": sum(r.get("masked_buckets", 0) for r in results),
        # hours of the window whose aggregates were never written: unknown to the forecaster
        "missing_partitions": max((r.get("missing_partitions", 0) for r in results), default=0),
        # hours of the trained day not aggregated yet when training stopped waiting for them
        "not_aggregated": list(not_aggregated or []),
        "by_model": dict(sorted(by_model.items())),
    }
    key = manifest_key(settings, trained_until)
    s3.put_object(Bucket=settings.bucket, Key=key, Body=json.dumps(manifest, indent=2, sort_keys=True).encode())
    manifest["uri"] = settings.s3_uri(key)
    return manifest


def read_parquet_uri(s3: Any, uri: str, columns: list[str] | None = None, filters: list | None = None) -> pd.DataFrame:
    """A Parquet object as a frame; ``columns`` and ``filters`` (pyarrow's) decode only what is
    asked for (row groups whose statistics rule them out are skipped)."""
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    body = io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    return pq.read_table(body, columns=columns, filters=filters).to_pandas()


def backtest_frame(series: str, metric: str, index: pd.DatetimeIndex, backtest: np.ndarray, history: np.ndarray) -> pd.DataFrame:
    """A forecast's backtest rows (``Forecast.backtest``: positions in ``index``, the history's
    buckets) as the training run writes them, with the range and size of everything ``history``
    has shown: the detector warmed from the backtests knows it from the first bucket it judges
    (``compare.warm_up``), not only the backtests' last days."""
    seen = history[np.isfinite(history)]
    return pd.DataFrame({
        "series": series, "metric": metric, "bucket_start": index[backtest[:, 0].astype(int)],
        "actual": backtest[:, 1], "mean": backtest[:, 2], "lower_95": backtest[:, 3], "upper_95": backtest[:, 4],
        "history_low": seen.min() if seen.size else np.nan, "history_high": seen.max() if seen.size else np.nan,
        "history_values": seen.size,
    })


def read_parquet_uris(s3: Any, uris: list[str], columns: list[str] | None = None, filters: list | None = None,
                      workers: int = 8, source: str | None = None) -> pa.Table:
    """Many Parquet objects as one table (same schema), fetched ``workers`` at a time: a
    comparison reads a training run's batches (200 of them at 10,000 series), and one GET at a
    time left it waiting on the network. ``source``: a column of that name holds each row's
    object, as its position in ``uris``."""
    def one(i: int, uri: str) -> pa.Table:
        bucket, key = uri.removeprefix("s3://").split("/", 1)
        body = io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        table = pq.read_table(body, columns=columns, filters=filters)
        return table.append_column(source, pa.array(np.full(table.num_rows, i, dtype=np.int32))) if source else table

    if len(uris) > 1 and workers > 1:
        with ThreadPoolExecutor(min(workers, len(uris))) as pool:
            tables = list(pool.map(one, range(len(uris)), uris))
    else:
        tables = [one(i, uri) for i, uri in enumerate(uris)]
    rows = [t for t in tables if t.num_rows]  # an empty batch's columns may carry no types (all-null)
    return pa.concat_tables(rows, promote_options="permissive") if rows else tables[0] if tables else pa.table({})


def day_floor(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC)
    return datetime(moment.year, moment.month, moment.day, tzinfo=UTC)


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


def train_all(settings: Settings, s3: Any, trained_until: datetime) -> dict[str, Any]:
    """The training DAG's three steps in one process (tests, evaluations)."""
    pending = hours_not_aggregated(settings, s3, trained_until)
    gathered = gather_training(settings, s3, trained_until, pending)
    training = read_parquet_uri(s3, gathered["training_uri"])
    masks = read_masks(settings, s3, trained_until)
    results = [fit_batch(settings, s3, trained_until, training, i, names, masks)
               for i, names in enumerate(batches(gathered["series"], settings.batch_size, settings.compare_shards))]
    return write_manifest(settings, s3, trained_until, results, pending)
