"""The comparison: one interval's actuals against the forecast, the detector's verdicts, alert
episodes, CloudWatch metrics and incidents. Everything is keyed by the interval:

    state/compare/<interval end>.json.gz    detector and episode state after the interval (gzipped JSON)
    compare/dt=YYYY-MM-DD/<HHMM>.parquet    the interval's evidence (every scored bucket)
    incidents/<token>.json                  one record per episode: which sinks hold it

A run reads the state written for its interval's start, so a rerun or a retried task reaches
the same verdicts, and the incident registry means an episode is opened once however often the
interval runs.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import msgspec
import numpy as np
import pandas as pd

from forewarn.aggregate import HOUR, floor_hour, parquet_bytes
from forewarn.config import Settings
from forewarn.detect import DetectorConfig, SeriesState, View, score, warm
from forewarn.publish import Incident, IncidentSink, impact_for, put_metrics
from forewarn.train import ZERO_WHEN_MISSING, day_floor, read_parquet_uri, run_prefix

log = logging.getLogger(__name__)
Z99 = 2.5758293035489


# --------------------------------------------------------------------------------------------
# State, serialised as plain JSON (floats round-trip exactly)
# --------------------------------------------------------------------------------------------


@dataclass
class Episode:
    """An open alert on one series: opened by its first anomalous bucket (on any metric), ended
    once every metric is back inside the 99% band for ``resolve_after`` buckets. A deviation of
    another metric or direction that joins it, or a peak that raises its impact, updates the
    one incident; the incident names the strongest deviation (``metric`` .. ``upper``)."""

    id: str
    started: str
    last_anomalous: str
    metric: str
    calm: int = 0
    peak: float = 0.0
    direction: str = "above"
    actual: float = 0.0
    expected: float = 0.0
    lower: float = 0.0
    upper: float = 0.0
    impact: int = 0  # as last reported (0 in states written before it was kept)
    deviations: list = field(default_factory=list)  # see Incident.deviations
    revision: int = 0


def _view_to_json(view: View) -> dict[str, Any]:
    return {"arrivals": list(view.arrivals), "surprises": list(view.surprises)}


def _view_from_json(doc: dict[str, Any]) -> View:
    arrivals = deque(doc["arrivals"])
    return View(sorted_devs=sorted(arrivals), arrivals=arrivals, surprises=deque(doc["surprises"]))


def state_to_json(states: dict[str, SeriesState], episodes: dict[str, Episode]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in sorted(states):
        d = states[key]
        out[key] = {
            "forecast_view": _view_to_json(d.forecast_view),
            "corrected_view": _view_to_json(d.corrected_view),
            "errors": list(d.errors),
            "low": None if not np.isfinite(d.low) else d.low,
            "high": None if not np.isfinite(d.high) else d.high,
            "seen": d.seen,
            "scored": d.scored,
            "recent_z": list(d.recent_z),
            "sustained_view": _view_to_json(d.sustained_view),
            "shortfall": [list(pair) for pair in d.shortfall],
        }
    return {"detectors": out, "episodes": {k: episodes[k].__dict__ for k in sorted(episodes)}}


def state_from_json(doc: dict[str, Any]) -> tuple[dict[str, SeriesState], dict[str, Episode]]:
    states = {}
    for key, v in doc["detectors"].items():
        states[key] = SeriesState(
            forecast_view=_view_from_json(v["forecast_view"]),
            corrected_view=_view_from_json(v["corrected_view"]),
            errors=deque(v["errors"]),
            low=np.inf if v["low"] is None else v["low"],
            high=-np.inf if v["high"] is None else v["high"],
            seen=v["seen"],
            scored=v["scored"],
            recent_z=deque(v["recent_z"]),
            sustained_view=_view_from_json(v["sustained_view"]),
            # states written before runs short of the rate were kept start a new run
            shortfall=deque(tuple(pair) for pair in v.get("shortfall", [])),
        )
    return states, {k: Episode(**v) for k, v in doc["episodes"].items()}


def state_key(settings: Settings, moment: datetime) -> str:
    return f"{settings.state_prefix}compare/{moment:%Y-%m-%dT%H%M}.json.gz"


#: JSON with sorted keys and shortest round-trip floats, several times faster than the standard
#: library's (numpy scalars written as the floats they are).
_STATE_ENCODER = msgspec.json.Encoder(order="sorted", enc_hook=float)


def write_state(settings: Settings, s3: Any, moment: datetime, doc: dict[str, Any]) -> int:
    """The state after an interval, gzipped JSON (about 48 KB a series and metric as JSON, 14-22
    KB gzipped at the fastest level; no timestamp in the header, so a rerun writes the same
    bytes). Returns the bytes written."""
    body = gzip.compress(_STATE_ENCODER.encode(doc), compresslevel=1, mtime=0)
    s3.put_object(Bucket=settings.bucket, Key=state_key(settings, moment), Body=body, ContentType="application/gzip")
    return len(body)


def read_state(settings: Settings, s3: Any, moment: datetime) -> dict[str, Any] | None:
    """The state written for ``moment`` (None if there is none), also as plain JSON as earlier
    versions wrote it."""
    key = state_key(settings, moment)
    for candidate in (key, key.removesuffix(".gz")):
        try:
            body = s3.get_object(Bucket=settings.bucket, Key=candidate)["Body"].read()
        except s3.exceptions.NoSuchKey:
            continue
        return msgspec.json.decode(gzip.decompress(body) if candidate.endswith(".gz") else body)
    return None


def evidence_key(settings: Settings, start: datetime) -> str:
    return f"compare/dt={start:%Y-%m-%d}/{start:%H%M}.parquet"


def incident_key(token: str) -> str:
    return f"incidents/{token}.json"


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def load_forecasts(settings: Settings, s3: Any, days: list[datetime]) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Forecast rows of the training runs for these days, the locations of their backtests (read
    only when a series has no detector state yet), and the days with no complete run (no
    manifest)."""
    frames, backtests, missing = [], [], []
    for day in days:
        key = run_prefix(settings, day) + "_manifest.json"
        try:
            manifest = json.loads(s3.get_object(Bucket=settings.bucket, Key=key)["Body"].read())
        except s3.exceptions.NoSuchKey:
            missing.append(day.isoformat())
            continue
        frames.extend(read_parquet_uri(s3, uri) for uri in manifest["batches"])
        backtests.extend(manifest.get("backtests", []))
    forecasts = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return forecasts, backtests, missing


def read_backtests(s3: Any, uris: list[str]) -> dict[tuple[str, str], pd.DataFrame]:
    """The training runs' backtests, by series and metric."""
    frames = [read_parquet_uri(s3, uri) for uri in uris]
    if not frames:
        return {}
    backtest = pd.concat(frames, ignore_index=True)
    return {key: rows for key, rows in backtest.groupby(["series", "metric"], sort=False)}


def read_actuals(settings: Settings, engine: Any, start: datetime, end: datetime, kinesis: Any = None, s3: Any = None) -> pd.DataFrame:
    """The interval's aggregates, by the same SQL as the aggregation DAG, from every landing hour
    its events can be in under the aggregation's rule: from an hour before it (clock skew) to
    ``lookback_hours`` after the hour its end falls in (late arrivals). Hours that have not
    happened yet are simply empty."""
    params = {
        "lookback_hours": settings.lookback_hours,
        "grain_seconds": settings.grain_seconds,
        "out_start_epoch": int(start.timestamp()),
        "out_end_epoch": int(end.timestamp()),
    }
    if settings.actuals_source == "kinesis":
        from forewarn.actuals import read_interval
        from forewarn.query import run_duckdb

        horizon = end + timedelta(minutes=settings.compare_delay_minutes)
        raw, info = read_interval(kinesis, s3, settings.bucket, settings.stream_name, settings.state_prefix, start, end, horizon)
        log.info("read %s from Kinesis", info)
        table = run_duckdb("aggregate", params, raw)
    else:
        table = engine.run("aggregate", params, floor_hour(start) - HOUR, floor_hour(end) + (1 + settings.lookback_hours) * HOUR)
    frame = table.to_pandas()
    if frame.empty:
        return pd.DataFrame(columns=["series", "bucket_start", *ZERO_WHEN_MISSING, "value_mean", "value_stddev", "value_p95"])
    frame["bucket_start"] = pd.to_datetime(frame["bucket_epoch"], unit="s", utc=True)
    return frame.drop(columns=["bucket_epoch"])


# --------------------------------------------------------------------------------------------
# The comparison
# --------------------------------------------------------------------------------------------


def warm_up(backtest: pd.DataFrame, cfg: DetectorConfig, first: pd.Timestamp | None = None,
            grain: pd.Timedelta | None = None) -> SeriesState:
    """A detector state built from one series and metric's out-of-sample backtests (from the
    training run), so it is judged from its first compared bucket. When the backtests end before
    the bucket just before ``first`` (the comparison starts later in the day), what they say of
    the forecast's recent errors is stale: the level correction, the pooled deviations and a
    count shortfall start afresh."""
    rows = backtest.sort_values("bucket_start") if len(backtest) else backtest
    state = SeriesState()
    if len(rows):  # an episode never spans the warm-up: its surprises are emptied
        state = warm(rows["actual"].to_numpy(float), rows["mean"].to_numpy(float), rows["lower_95"].to_numpy(float),
                     rows["upper_95"].to_numpy(float), cfg)
        if first is not None and grain is not None and rows["bucket_start"].iloc[-1] + grain < first:
            state.errors.clear()
            state.recent_z.clear()
            state.shortfall.clear()
    return state


def compare_interval(
    settings: Settings,
    engine: Any,
    s3: Any,
    cloudwatch: Any,
    sinks: list[IncidentSink],
    start: datetime,
    end: datetime,
    now: datetime,
    open_incidents: bool = True,
    dashboard_url: str | None = None,
    kinesis: Any = None,
) -> dict[str, Any]:
    if (end - start).total_seconds() % settings.grain_seconds:
        raise ValueError(
            f"the comparison interval ({end - start}) is not a whole number of {settings.grain_seconds}-second buckets: "
            "set FOREWARN_COMPARE_MINUTES to a multiple of the grain"
        )
    cfg = DetectorConfig(min_history=3600 * 24 // settings.grain_seconds, threshold=settings.alert_threshold)
    grain = pd.Timedelta(seconds=settings.grain_seconds)
    buckets = pd.date_range(pd.Timestamp(start).tz_convert("UTC"), pd.Timestamp(end).tz_convert("UTC"), freq=grain, inclusive="left")
    days = sorted({day_floor(b.to_pydatetime()) for b in buckets})
    forecasts, backtest_uris, missing_runs = load_forecasts(settings, s3, days)
    actuals = read_actuals(settings, engine, start, end, kinesis=kinesis, s3=s3)

    doc = read_state(settings, s3, start)
    (states, episodes), warmed = (state_from_json(doc), False) if doc is not None else (({}, {}), True)

    rows: list[dict[str, Any]] = []
    if len(forecasts):
        window = forecasts[forecasts["bucket_start"].isin(buckets)]
        keys = sorted(set(zip(window["series"], window["metric"], strict=True)))
        cold = [key for key in keys if f"{key[0]}|{key[1]}" not in states]
        if cold:
            backtests = read_backtests(s3, backtest_uris)
            for key in cold:
                states[f"{key[0]}|{key[1]}"] = warm_up(backtests.get(key, pd.DataFrame()), cfg, buckets[0], grain)
        # every series' forecast and actuals on one grid (keys x buckets), then a row of it each
        grid = pd.MultiIndex.from_tuples([(s_, m_, b) for s_, m_ in keys for b in buckets], names=["series", "metric", "bucket_start"])
        band = window.set_index(["series", "metric", "bucket_start"])[["mean", "lower_95", "upper_95"]].reindex(grid)
        mean, lower, upper = (band[c].to_numpy(float).reshape(len(keys), len(buckets)) for c in ("mean", "lower_95", "upper_95"))
        names = sorted({s_ for s_, _ in keys})
        at = pd.MultiIndex.from_product([names, buckets], names=["series", "bucket_start"])
        seen = actuals.set_index(["series", "bucket_start"]).reindex(at) if len(actuals) else pd.DataFrame(index=at)
        row_of = {name: i for i, name in enumerate(names)}
        got = {m: (seen[m].to_numpy(float) if m in seen else np.full(len(at), np.nan)).reshape(len(names), len(buckets))
               for m in {m for _, m in keys}}
        for k, (series, metric) in enumerate(keys):
            rows += judge(series, metric, buckets, got[metric][row_of[series]], mean[k], lower[k], upper[k],
                          states[f"{series}|{metric}"], cfg)
    actions = track_episodes(episodes, rows, settings)

    evidence = pd.DataFrame(rows)
    ekey = evidence_key(settings, start)
    s3.put_object(Bucket=settings.bucket, Key=ekey, Body=parquet_bytes(_evidence_table(evidence)))
    evidence_uri = settings.s3_uri(ekey)

    opened = updated = resolved = 0
    for kind, incident in actions:
        incident.evidence_uri = evidence_uri
        incident.dashboard_url = dashboard_url
        if not open_incidents:
            continue
        if kind == "open":
            opened += _open(settings, s3, sinks, incident)
        elif kind == "update":
            updated += _update(settings, s3, sinks, incident)
        else:
            resolved += _resolve(settings, s3, sinks, incident)

    metrics = put_metrics(cloudwatch, settings.cloudwatch_namespace, metric_data(evidence), now) if len(evidence) else {"sent": 0}
    write_state(settings, s3, end, state_to_json(states, episodes))
    summary = {
        "interval": [start.isoformat(), end.isoformat()],
        "scored": int(len(evidence)),
        "anomalous": int((evidence["anomalous"] != 0).sum()) if len(evidence) else 0,
        "cold_start": int(evidence["cold_start"].sum()) if len(evidence) else 0,
        "episodes_opened": sum(1 for k, _ in actions if k == "open"),
        "episodes_resolved": sum(1 for k, _ in actions if k == "resolve"),
        "episodes_updated": sum(1 for k, _ in actions if k == "update"),
        "incidents_opened": opened,
        "incidents_updated": updated,
        "incidents_resolved": resolved,
        "missing_forecast_days": missing_runs,
        "state_warmed_from_backtests": warmed,
        "metrics": metrics,
        "evidence": evidence_uri,
        "keys": sorted({(r["series"], r["metric"]) for r in rows}),
    }
    log.info("compared %s: %s", start.isoformat(), summary)
    return summary


def judge(series: str, metric: str, buckets: pd.DatetimeIndex, actual: np.ndarray, mean: np.ndarray, lower95: np.ndarray,
          upper95: np.ndarray, state: SeriesState, cfg: DetectorConfig) -> list[dict[str, Any]]:
    """The detector's verdict on consecutive buckets of one series' metric, a row each (the
    evidence's rows), updating ``state``. A count with no events where events were expected is
    a zero, and a deviation; a missing value of another metric is not judged."""
    counts = metric in ZERO_WHEN_MISSING
    if counts:
        actual = np.nan_to_num(actual, nan=0.0)
    likelihood, z, _ = score(actual, mean, lower95, upper95, state, cfg, counts=counts)
    anomalous = np.where(likelihood >= cfg.threshold, np.where(z > 0, 1, -1), 0)
    return [{"series": series, "metric": metric, "bucket_start": bucket, "actual": actual[i], "mean": mean[i], "lower_95": lower95[i],
             "upper_95": upper95[i], "deviation": z[i], "likelihood": likelihood[i], "anomalous": int(anomalous[i]),
             "cold_start": state.scored == 0} for i, bucket in enumerate(buckets)]


def track_episodes(episodes: dict[str, Episode], rows: list[dict[str, Any]], settings: Settings) -> list[tuple[str, Incident]]:
    """Episodes per series, bucket by bucket over all its metrics, in time order: what to open,
    update or resolve."""
    by_series: dict[tuple[str, pd.Timestamp], list[dict]] = {}
    for row in rows:
        by_series.setdefault((row["series"], row["bucket_start"]), []).append(row)
    actions = []
    for (series, bucket), group in sorted(by_series.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        action = _track_episode(episodes, series, bucket, group, settings)
        if action:
            actions.append(action)
    return actions


def _track_episode(episodes: dict[str, Episode], series: str, bucket: pd.Timestamp, group: list[dict],
                   settings: Settings) -> tuple[str, Incident] | None:
    stamp = bucket.isoformat()
    flagged = sorted((r for r in group if r["anomalous"]), key=lambda r: -r["likelihood"])
    ep = episodes.get(series)
    if flagged:
        if ep is None:
            ep = episodes[series] = Episode(id=f"{series}|{bucket:%Y-%m-%dT%H:%M}", started=stamp, last_anomalous=stamp,
                                            metric=flagged[0]["metric"])
            for row in flagged:
                _join(ep, row, stamp)
            _lead(ep)
            ep.impact = impact_for(ep.peak, settings.alert_threshold)
            return "open", _incident(ep, series, settings.alert_threshold)
        ep.last_anomalous, ep.calm = stamp, 0
        if not ep.deviations:  # an episode from a state written before deviations were kept
            ep.deviations = [_deviation(ep.metric, ep.direction, ep.started, ep.actual, ep.expected, ep.lower, ep.upper, ep.peak)]
            ep.impact = ep.impact or impact_for(ep.peak, settings.alert_threshold)
        changes = [_join(ep, row, stamp) for row in flagged]
        changes = [c for c in changes if c]
        lead = ep.metric, ep.direction
        _lead(ep)
        if (ep.metric, ep.direction) != lead:
            changes.append(f"now led by {ep.metric} {ep.direction}")
        impact = impact_for(ep.peak, settings.alert_threshold)
        if impact < ep.impact:
            changes.append(f"impact {ep.impact} -> {impact}")
            ep.impact = impact
        if not changes:
            return None
        ep.revision += 1
        incident = _incident(ep, series, settings.alert_threshold)
        incident.changes, incident.updated = changes, bucket.to_pydatetime()
        return "update", incident
    if ep is not None:
        calm = all(abs(r["deviation"]) <= Z99 for r in group if np.isfinite(r["deviation"]))
        ep.calm = ep.calm + 1 if calm else 0
        if ep.calm >= settings.resolve_after:
            incident = _incident(ep, series, settings.alert_threshold)
            incident.ended = bucket.to_pydatetime()
            del episodes[series]
            return "resolve", incident
    return None


def _deviation(metric: str, direction: str, since: str, actual: float, expected: float, lower: float, upper: float,
               likelihood: float) -> dict[str, Any]:
    return {"metric": metric, "direction": direction, "since": since, "actual": float(actual), "expected": float(expected),
            "lower_95": float(lower), "upper_95": float(upper), "likelihood": float(likelihood)}


def _join(ep: Episode, row: dict, stamp: str) -> str | None:
    """Fold one flagged row into the episode's deviations; say so when its metric and direction
    are new to the episode. A known deviation keeps the numbers of its strongest bucket."""
    direction = "above" if row["deviation"] > 0 else "below"
    new = _deviation(row["metric"], direction, stamp, row["actual"], row["mean"], row["lower_95"], row["upper_95"], row["likelihood"])
    ep.peak = max(ep.peak, float(row["likelihood"]))
    for known in ep.deviations:
        if (known["metric"], known["direction"]) == (row["metric"], direction):
            if new["likelihood"] > known["likelihood"]:
                known.update({k: v for k, v in new.items() if k != "since"})
            return None
    ep.deviations.append(new)
    return None if len(ep.deviations) == 1 else f"{row['metric']} {direction} its forecast joined"


def _lead(ep: Episode) -> None:
    """The incident names the episode's strongest deviation (the first to reach its peak)."""
    top = max(ep.deviations, key=lambda d: d["likelihood"])
    ep.metric, ep.direction = top["metric"], top["direction"]
    ep.actual, ep.expected, ep.lower, ep.upper = top["actual"], top["expected"], top["lower_95"], top["upper_95"]


def _incident(ep: Episode, series: str, threshold: float) -> Incident:
    return Incident(
        episode=ep.id, series=series, metric=ep.metric, started=datetime.fromisoformat(ep.started), direction=ep.direction,
        actual=float(ep.actual), expected=float(ep.expected), lower=float(ep.lower), upper=float(ep.upper),
        likelihood=float(ep.peak), impact=ep.impact or impact_for(ep.peak, threshold), evidence_uri="",
        deviations=[dict(d) for d in ep.deviations], revision=ep.revision,
    )


def _registry(settings: Settings, s3: Any, token: str) -> dict[str, Any]:
    try:
        return json.loads(s3.get_object(Bucket=settings.bucket, Key=incident_key(token))["Body"].read())
    except s3.exceptions.NoSuchKey:
        return {}


def _open(settings: Settings, s3: Any, sinks: list[IncidentSink], incident: Incident) -> int:
    """Open the episode in every sink that does not hold it yet; 1 if any sink opened it now."""
    record = _registry(settings, s3, incident.token)
    refs = record.get("refs", {})
    new = 0
    for sink in sinks:
        if sink.name in refs:
            continue
        refs[sink.name] = sink.open(incident)
        new = 1
        record = {"episode": incident.episode, "status": "open", "facts": incident.facts(), "refs": refs}
        s3.put_object(Bucket=settings.bucket, Key=incident_key(incident.token), Body=json.dumps(record, sort_keys=True).encode())
    return new


def _update(settings: Settings, s3: Any, sinks: list[IncidentSink], incident: Incident) -> int:
    """Report an update to every sink holding the episode that has not had this revision; 1 if
    any had it now. Recorded per sink, so a retry after a partial failure repeats nothing."""
    record = _registry(settings, s3, incident.token)
    if not record or record.get("status") == "resolved":
        return 0
    done = record.setdefault("revisions", {})
    new = 0
    for sink in sinks:
        if sink.name not in record["refs"] or done.get(sink.name, 0) >= incident.revision:
            continue
        sink.update(incident, record["refs"][sink.name])
        done[sink.name], record["facts"], new = incident.revision, incident.facts(), 1
        s3.put_object(Bucket=settings.bucket, Key=incident_key(incident.token), Body=json.dumps(record, sort_keys=True).encode())
    return new


def _resolve(settings: Settings, s3: Any, sinks: list[IncidentSink], incident: Incident) -> int:
    record = _registry(settings, s3, incident.token)
    if not record or record.get("status") == "resolved":
        return 0
    for sink in sinks:
        if sink.name in record["refs"]:
            sink.resolve(incident, record["refs"][sink.name])
    record.update(status="resolved", ended=incident.ended.isoformat() if incident.ended else None)
    s3.put_object(Bucket=settings.bucket, Key=incident_key(incident.token), Body=json.dumps(record, sort_keys=True).encode())
    return 1


def _evidence_table(evidence: pd.DataFrame):
    import pyarrow as pa

    if evidence.empty:
        return pa.table({"series": pa.array([], pa.string())})
    return pa.Table.from_pandas(evidence, preserve_index=False)


def metric_data(evidence: pd.DataFrame) -> list[dict[str, Any]]:
    """Per series and metric: actual, forecast, band, deviation score, likelihood, anomalous."""
    data = []
    names = (("actual", "Actual"), ("mean", "Forecast"), ("lower_95", "ForecastLower"), ("upper_95", "ForecastUpper"),
             ("deviation", "DeviationScore"), ("likelihood", "AnomalyLikelihood"), ("anomalous", "Anomalous"))
    for row in evidence.itertuples(index=False):
        dims = [{"Name": "Series", "Value": row.series}, {"Name": "Metric", "Value": row.metric}]
        stamp = row.bucket_start.to_pydatetime()
        for column, name in names:
            value = getattr(row, column)
            data.append({"MetricName": name, "Dimensions": dims, "Timestamp": stamp, "Value": float(value), "Unit": "None"})
    return data


def read_evidence(s3: Any, bucket: str, key: str) -> pd.DataFrame:
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read())).to_pandas()
