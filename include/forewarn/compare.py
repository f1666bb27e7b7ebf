"""The comparison, orchestrated: one interval's actuals against the forecast, the detector's
verdicts, alert episodes, CloudWatch metrics and incidents.

A run carries the state of the latest interval at or before its start (``forewarn.state``): a
gap left by failed or skipped runs is replayed (its buckets judged, late) or, when longer than
``compare_replay_hours``, bridged; episodes are never reset. Each bucket is judged against the
newest training run that covers it; series with no forecast for a bucket are counted, and
forewarn says so itself ("blind") like any other episode. Live runs reconcile their episodes
with the incident registry (``forewarn.registry``): an episode open in the sinks and lost from
the state is adopted (or, when a run had decided it ended and a sink failed before all knew,
resolved), one the state holds and no sink does is opened. Backfills keep their own
state chain and tell nobody, unless asked to. Every key: ``forewarn.layout``.
"""

from __future__ import annotations

import io
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from forewarn.aggregate import HOUR, classify_within, floor_hour, parquet_bytes
from forewarn.blas import one_blas_thread
from forewarn.config import CLOUDWATCH_METRICS, METRIC_MEANINGS, Settings
from forewarn.detect import MAX_DEVIATION, DetectorConfig, Memory, score, score_many, standardised, warm
from forewarn.dimensions import accumulate, fold_children, members_recovered, parent_of
from forewarn.episodes import (
    Episode,
    RuledOut,
    RuledOutRuns,
    adopt,
    incident_of,
    ruled_out_record,
    span_record,
    track_episodes,
)
from forewarn.layout import episode_key, evidence_key, manifest_key, shard_of
from forewarn.publish import Incident, IncidentSink, put_metrics, token_of
from forewarn.query import aggregate_query
from forewarn.registry import (
    SinkFailed,
    open_incident,
    open_tokens,
    read_record,
    resolve_incident,
    update_incident,
)
from forewarn.state import State, find_state, write_state
from forewarn.train import FORECAST_COLUMNS, day_floor, read_parquet_uris

log = logging.getLogger(__name__)

#: The pipeline's own episode: forewarn cannot judge some series (no forecast covers them).
BLIND_SERIES = "forewarn"
#: In the episode id of a model-quality alert (``forewarn.quality.MARK``).
MODEL_QUALITY_MARK = "|model-quality:"

EVIDENCE_COLUMNS = ["series", "metric", "bucket_start", "actual", "mean", "lower_95", "upper_95", "deviation", "likelihood",
                    "anomalous", "cold_start", "late"]


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


#: The longest horizon a training run can be asked for (``forewarn_train``'s ``horizon_hours``).
MAX_HORIZON_HOURS = 168


def load_forecasts(settings: Settings, s3: Any, buckets: pd.DatetimeIndex,
                   shard: int | None = None) -> tuple[pd.DataFrame, list[str], dict[str, Any]]:
    """For every bucket, the forecast rows of the newest training run that covers it (a run
    covers the ``horizon_hours`` its manifest records from its end, so just after midnight, before the day's run is
    published, the previous day's still does); the locations of those runs' backtests (read only
    for series with no detector state yet); and what was found: the runs used, the days whose own
    run is missing, and the newest run's end."""
    first, last = buckets[0].to_pydatetime(), buckets[-1].to_pydatetime()
    # a run may have been made with its own horizon (forewarn_train's param, up to a week): each
    # run's manifest says what it covers; days back to the longest one are candidates
    reach = timedelta(hours=max(settings.horizon_hours, MAX_HORIZON_HOURS))
    candidates = []
    day = day_floor(first - reach)
    while day <= last:
        candidates.append(day)
        day += timedelta(days=1)
    frames, backtests, used, missing = [], [], [], []
    days_needed = {day_floor(b.to_pydatetime()) for b in buckets}
    reached: set[pd.Timestamp] = set()  # buckets some run read so far covers
    for day in reversed(candidates):  # newest first
        if day + reach <= first:
            break
        try:
            manifest = json.loads(s3.get_object(Bucket=settings.bucket, Key=manifest_key(settings, day))["Body"].read())
        except s3.exceptions.NoSuchKey:
            if day in days_needed:
                missing.append(day.isoformat())
            continue
        if int(manifest.get("grain_seconds") or settings.grain_seconds) != settings.grain_seconds:
            continue  # trained at another grain (before grain_seconds changed): its buckets are not these
        horizon = timedelta(hours=float(manifest.get("horizon_hours") or settings.horizon_hours))
        covered = [b for b in buckets if day <= b.to_pydatetime() < day + horizon]
        if not covered:
            continue
        lo, hi = covered[0], covered[-1]
        chosen = _shard_batches(settings, manifest, shard)
        hourly = _hourly_objects(settings, manifest, shard, lo, hi)
        uris = hourly if hourly is not None else [manifest["batches"][i] for i in chosen]
        part = (read_parquet_uris(s3, uris, FORECAST_COLUMNS, [("bucket_start", ">=", lo), ("bucket_start", "<=", hi)]).to_pandas()
                if uris else pd.DataFrame(columns=FORECAST_COLUMNS))
        part = part[part["bucket_start"].isin(covered)]
        if shard is not None and settings.compare_shards > 1 and manifest.get("shard_count") != settings.compare_shards:
            part = part[in_shard(part["series"], shard, settings.compare_shards)]  # trained for another shard count
        frames.append(part.assign(run=day.isoformat()))
        listed = manifest.get("backtests", [])
        backtests.extend(listed[i] for i in chosen if i < len(listed))
        used.append(day.isoformat())
        reached.update(covered)
        if len(reached) == len(buckets):
            break  # every bucket has its newest run (runs' horizons differ: an older one may reach further)
    if frames:
        forecasts = pd.concat(frames, ignore_index=True)
        # newest run first, so a bucket two runs cover keeps the newer run's forecast
        forecasts = forecasts.sort_values("run", ascending=False, kind="stable").drop_duplicates(["series", "metric", "bucket_start"])
    else:
        forecasts = pd.DataFrame(columns=["series", "metric", "bucket_start", "mean", "lower_95", "upper_95", "run"])
    info = {"runs": sorted(used), "missing_days": sorted(missing), "newest_run": max(used) if used else None}
    return forecasts, backtests, info


def _hourly_objects(settings: Settings, manifest: dict[str, Any], shard: int | None, lo: pd.Timestamp,
                    hi: pd.Timestamp) -> list[str] | None:
    """The run's hourly objects of this shard for the hours from ``lo`` to ``hi``, or None when
    the run has none for this shard count (a version 1 manifest, or trained for other shards):
    then the batches are read."""
    if "hourly" not in manifest or manifest.get("shard_count", 1) != max(1, settings.compare_shards):
        return None
    shards = [str(shard)] if shard is not None else sorted(manifest["hourly"])
    hours = [h.isoformat() for h in pd.date_range(lo.floor("h"), hi.floor("h"), freq="h")]
    return [settings.s3_uri(manifest["hourly"][k][h]) for k in shards for h in hours if h in manifest["hourly"].get(k, {})]


def _shard_batches(settings: Settings, manifest: dict[str, Any], shard: int | None) -> list[int]:
    """The positions of the batches a shard reads: its own when the run was trained for this
    shard count, else every batch (filtered by series afterwards)."""
    every = list(range(len(manifest["batches"])))
    if shard is None or settings.compare_shards <= 1 or manifest.get("shard_count") != settings.compare_shards:
        return every
    return list(manifest["shards"].get(str(shard), []))


def in_shard(series: pd.Series, shard: int, shards: int) -> np.ndarray:
    names = series.unique()
    mine = {name for name in names if shard_of(name, shards) == shard}
    return series.isin(mine).to_numpy()


def read_backtests(s3: Any, uris: list[str]) -> dict[tuple[str, str], pd.DataFrame]:
    """The training runs' backtests, by series and metric: the newest run's where two have one
    (``uris`` come newest run first, as ``load_forecasts`` lists them; a series is in one batch
    of each run)."""
    if not uris:
        return {}
    backtest = read_parquet_uris(s3, uris, source="_object").to_pandas()
    if backtest.empty:
        return {}
    first = backtest.groupby(["series", "metric"], sort=False)["_object"].transform("min")
    backtest = backtest[backtest["_object"] == first].drop(columns="_object")
    return {key: rows for key, rows in backtest.groupby(["series", "metric"], sort=False)}


def read_actuals(settings: Settings, engine: Any, start: datetime, end: datetime, kinesis: Any = None, s3: Any = None,
                 shard: int | None = None, plan: Any = None) -> pd.DataFrame:
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
    params = classify_within(params, params["out_start_epoch"], params["out_end_epoch"])
    from forewarn.dimensions import read_catalog, rollup_plan

    plan = plan if plan is not None else rollup_plan(settings)  # ``plan``: with the per-series settings' roll-ups
    catalog = None
    if plan.sets:  # the values the aggregation keeps, read, never admitted here
        if s3 is None:
            raise ValueError("read_actuals needs the S3 client to read the dimension catalog when roll-ups are declared")
        catalog = read_catalog(settings, s3)
    query, extra = aggregate_query(settings, catalog, plan)
    if settings.actuals_source == "kinesis":
        from forewarn.actuals import read_interval
        from forewarn.query import run_duckdb

        horizon = end + timedelta(minutes=settings.compare_wait_minutes)
        raw, info = read_interval(kinesis, s3, settings.bucket, settings.stream_name, settings.state_prefix, start, end, horizon)
        log.info("read %s from Kinesis", info)
        table = run_duckdb(query, {**params, **extra}, raw)
    else:
        table = engine.run(query, {**params, **extra}, floor_hour(start) - HOUR, floor_hour(end) + (1 + settings.lookback_hours) * HOUR,
                           shard=shard)
    frame = table.to_pandas()
    if frame.empty:
        return pd.DataFrame(columns=["series", "bucket_start", *METRIC_MEANINGS])
    frame["bucket_start"] = pd.to_datetime(frame["bucket_epoch"], unit="s", utc=True)
    return frame.drop(columns=["bucket_epoch"])


# --------------------------------------------------------------------------------------------
# The detector, per series and metric
# --------------------------------------------------------------------------------------------


def warm_up(backtest: pd.DataFrame, cfg: DetectorConfig, first: pd.Timestamp | None = None,
            grain: pd.Timedelta | None = None, metric: str | None = None) -> Memory:
    """A detector memory (one row) built from one series and metric's out-of-sample backtests
    (from the training run), so it is judged from its first compared bucket. When the backtests
    end before the bucket just before ``first`` (the comparison starts later in the day), what
    they say of the forecast's recent errors is stale: the level correction and a count
    shortfall start afresh. The range of values the series has shown is the whole training
    history's where the backtests carry it (``history_low``, ``history_high``, ``history_values``),
    not only the backtests' last days: a value is novel when it lies beyond everything the series
    has shown, as in a replay of its whole history (``eval_nab``), the buckets kept out of
    training (past episodes, holidays, planned recurrences) apart."""
    rows = backtest.sort_values("bucket_start") if len(backtest) else backtest
    if not len(rows):
        return Memory.empty(1, cfg)
    counts = METRIC_MEANINGS[metric].poisson if metric in METRIC_MEANINGS else False
    state = warm(rows["actual"].to_numpy(float), rows["mean"].to_numpy(float), rows["lower_95"].to_numpy(float),
                 rows["upper_95"].to_numpy(float), cfg, counts=counts)  # an episode never spans the warm-up
    if first is not None and grain is not None and rows["bucket_start"].iloc[-1] + grain < first:
        state.forget_recent()
    # (backtests written before they carried the history's range have no such columns, or nulls)
    if {"history_low", "history_high", "history_values"} <= set(rows.columns):
        low, high, size = (float(rows[c].iloc[-1]) for c in ("history_low", "history_high", "history_values"))
        if np.isfinite(low) and np.isfinite(high) and np.isfinite(size):
            state.low[0], state.high[0] = min(state.low[0], low), max(state.high[0], high)
            state.seen[0] = max(int(state.seen[0]), int(size))
    return state


def judge(series: str, metric: str, buckets: pd.DatetimeIndex, actual: np.ndarray, mean: np.ndarray, lower95: np.ndarray,
          upper95: np.ndarray, state: Memory, cfg: DetectorConfig, late_before: pd.Timestamp | None = None) -> list[dict[str, Any]]:
    """The detector's verdict on consecutive buckets of one series' metric, a row each (the
    evidence's rows), updating ``state``. The metric's meaning says what a bucket with no events
    is: a zero for counts and sums (and a deviation, where events were expected), unknown
    otherwise (not judged); only counts are judged as Poisson counts. Buckets before
    ``late_before`` are marked late (a gap replayed)."""
    meaning = METRIC_MEANINGS.get(metric)
    if meaning is not None and meaning.zero_when_missing:
        actual = np.nan_to_num(actual, nan=0.0)
    likelihood, z, _ = score(actual, mean, lower95, upper95, state, cfg, counts=bool(meaning and meaning.poisson))
    anomalous = np.where(likelihood >= cfg.threshold, np.where(z > 0, 1, -1), 0)
    return [{"series": series, "metric": metric, "bucket_start": bucket, "actual": actual[i], "mean": mean[i], "lower_95": lower95[i],
             "upper_95": upper95[i], "deviation": z[i], "likelihood": likelihood[i], "anomalous": int(anomalous[i]),
             "cold_start": int(state.scored[0]) == 0, "late": bool(late_before is not None and bucket < late_before)}
            for i, bucket in enumerate(buckets)]


def detector_config(settings: Settings) -> DetectorConfig:
    per_day = 3600 * 24 // settings.grain_seconds
    return DetectorConfig(min_history=per_day, quality_window=per_day, threshold=settings.alert_threshold)


# --------------------------------------------------------------------------------------------
# The comparison
# --------------------------------------------------------------------------------------------


@one_blas_thread  # the task is the parallelism (forewarn.blas)
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
    shard: int | None = None,
) -> dict[str, Any]:
    """Judge ``[start, end)`` (and a gap before it, see the module docstring). ``open_incidents``
    False: a backfill, on its own state chain, telling no sink. ``shard`` (with
    ``compare_shards`` > 1): judge only that shard's series, on its own state. Raises ``SinkFailed`` after
    everything else is written when a sink failed (the retry repeats only what is missing)."""
    if (end - start).total_seconds() % settings.grain_seconds:
        raise ValueError(
            f"the comparison interval ({end - start}) is not a whole number of {settings.grain_seconds}-second buckets: "
            "set FOREWARN_COMPARE_MINUTES to a multiple of the grain"
        )
    cfg = detector_config(settings)
    grain = pd.Timedelta(seconds=settings.grain_seconds)
    for name, at in (("start", start), ("end", end)):
        if pd.Timestamp(at).value % grain.value:
            raise ValueError(
                f"the comparison interval's {name} ({at.isoformat()}) is not on the {settings.grain_seconds}-second bucket grid, "
                "so a bucket would be judged before it ended: give bucket boundaries (forewarn.tasks.compare aligns a "
                "manual run's interval to the schedule)"
            )
    chain = "live" if open_incidents else "backfill"

    if settings.compare_shards > 1 and shard is None:
        raise ValueError(f"compare_shards={settings.compare_shards}: say which shard to compare (0-{settings.compare_shards - 1})")
    shard = shard if settings.compare_shards > 1 else None
    found = find_state(settings, s3, start, chain, timedelta(hours=settings.state_search_hours), cfg, shard)
    carried = found.state if found else State([], Memory.empty(0, cfg), {}, {})
    afresh = not carried.memory.fits(cfg)
    if afresh:  # the grain (a day of buckets) or a detector size changed since it was written
        log.warning("the detector memory in the state of %s was built for other sizes (grain_seconds or the detector's "
                    "settings changed): its %d series start afresh from their backtests; open episodes carry on",
                    found.moment.isoformat() if found else "?", len(carried.keys))
        carried = State([], Memory.empty(0, cfg), carried.episodes, carried.doc, carried.ruled_out)
    names, memory, episodes, ruled_out = list(carried.keys), carried.memory, carried.episodes, carried.ruled_out
    blind = dict(carried.doc.get("blind") or {})
    judge_from, bridged = start, False
    if found and found.moment < start and not afresh:  # a memory started afresh has nothing to replay on another grid
        if start - found.moment <= timedelta(hours=settings.compare_replay_hours):
            judge_from = pd.Timestamp(found.moment).floor(grain).to_pydatetime()  # a state left off the grid: its bucket again
            if judge_from != found.moment:
                log.warning("the state of %s is not on the %d-second bucket grid (a manual run before runs were aligned): "
                            "judging from %s", found.moment.isoformat(), settings.grain_seconds, judge_from.isoformat())
        else:
            bridged = True
            memory.forget_recent()
    buckets = pd.date_range(pd.Timestamp(judge_from).tz_convert("UTC"), pd.Timestamp(end).tz_convert("UTC"), freq=grain, inclusive="left")
    first_live = pd.Timestamp(start).tz_convert("UTC")

    from forewarn.dimensions import rollup_plan
    from forewarn.series_settings import (
        applied,
        judge_arrays,
        read_series_settings,
        route_problems,
        routed_sinks,
    )

    series_rules = read_series_settings(settings, s3)
    plan = rollup_plan(settings, series_rules)
    forecasts, backtest_uris, runs = load_forecasts(settings, s3, buckets, shard)
    actuals = read_actuals(settings, engine, judge_from, end, kinesis=kinesis, s3=s3, shard=shard, plan=plan)
    if shard is not None and len(actuals):
        actuals = actuals[in_shard(actuals["series"], shard, settings.compare_shards)]

    keys = sorted(set(zip(forecasts["series"], forecasts["metric"], strict=True)))
    held = set(names)
    cold = [key for key in keys if f"{key[0]}|{key[1]}" not in held]
    if cold:
        backtests = read_backtests(s3, backtest_uris)
        memory = Memory.concat([memory, *(warm_up(backtests.get(key, pd.DataFrame()), cfg, buckets[0], grain, metric=key[1])
                                          for key in cold)], cfg)
        names += [f"{s_}|{m_}" for s_, m_ in cold]
    index = {name: i for i, name in enumerate(names)}
    rules = judge_arrays(series_rules, keys, cfg.threshold)
    misrouted = route_problems(series_rules, [s.name for s in sinks], f"s3://{settings.bucket}/{settings.series_settings_key}")
    for problem in misrouted if open_incidents else []:
        log.error("%s: its series go to the sinks it names that exist, or to every sink", problem)
    evidence = _judge_all(keys, buckets, forecasts, actuals, memory, [index[f"{s_}|{m_}"] for s_, m_ in keys], cfg, first_live, rules,
                          keep_quality=True)

    # coverage: every series forewarn knows, judged against a forecast in every bucket?
    watched = {f"{s_}|{m_}" for s_, m_ in keys}
    covered = evidence.groupby(["series", "metric"]).size() if len(evidence) else pd.Series(dtype=int)
    full = {f"{s_}|{m_}" for (s_, m_), n in covered.items() if n == len(buckets)}
    blind_keys = sorted(set(names) - full)
    own_run = runs["newest_run"] is not None and day_floor(buckets[-1].to_pydatetime()).isoformat() in runs["runs"]
    if own_run:
        # the day's own run exists: a series it no longer forecasts is no longer watched
        if watched != set(names):
            keep = [i for i, name in enumerate(names) if name in watched]
            names, memory = [names[i] for i in keep], memory.take(keep)
        blind_keys = [k for k in blind_keys if k in watched]
    forecast_series = {s_ for s_, _ in keys}
    with_events = set(actuals["series"]) if len(actuals) else set()
    unforecast = sorted(with_events - forecast_series)  # events, but no forecast (a new series: the next training run takes it up)
    # no training run covers the interval at all: nothing with events is judged (before the first
    # run ever, as after a fresh deployment, the health metrics say so, without an incident)
    unjudged = {f"{s_}|{m_}" for s_ in unforecast for m_ in settings.metric_list} if runs["newest_run"] is None else set()
    if unjudged and _ever_trained(settings, s3):
        blind_keys = sorted(set(blind_keys) | unjudged)
    known = set(names) | watched | unjudged

    reconciled = {"adopted": 0, "closed": 0, "resolved_late": 0, "reported_late": 0}
    failures: list[str] = []
    if open_incidents:
        reconciled.update(_adopt_lost_episodes(settings, s3, sinks, episodes, failures, buckets[0], shard))
    closed: list[tuple[str, Episode]] = []
    not_judged = set() if rules is None else {key for key, judged in zip(keys, rules["judged"], strict=True) if not judged}
    ruled = RuledOutRuns(ruled_out, cfg.threshold, not_judged)
    actions = track_episodes(episodes, _episode_rows(evidence, episodes, ruled), settings, closed, ruled)
    sources = {series: applied(series_rules, series).source for series in episodes} if series_rules else None
    actions, joined, waiting = fold_children(actions, episodes, closed, plan.sets, sources, now=buckets[-1] + grain,
                                             hold=timedelta(minutes=settings.rollup_hold_minutes))
    recovered = members_recovered(closed, episodes)
    opening = {i.series for kind, i in actions if kind == "open"}
    for parent in sorted((set(joined) | set(recovered)) - opening):  # one incident per cause: who joined it, who recovered
        ep = episodes[parent]
        ep.revision += 1
        incident = incident_of(ep, parent, settings.alert_threshold)
        incident.changes = ([f"{', '.join(joined[parent])} joined (same cause)"] if parent in joined else []) + (
            [f"{', '.join(recovered[parent])} recovered"] if parent in recovered else [])
        incident.updated = buckets[-1].to_pydatetime()
        actions.append(("update", incident))
    for series, ep in episodes.items() if plan.sets else ():  # which dimension moved, over each episode so far
        if not ep.member_of and parent_of(series, plan.sets) is None and (sets := plan.sets_for(series)):
            accumulate(evidence, series, ep, sets)
    # an episode of a series the day's own run no longer forecasts gets no evidence to end it: end it now
    orphaned = {series for series in episodes if own_run and series not in forecast_series and series != BLIND_SERIES}
    for series in sorted(orphaned):
        ep = episodes.pop(series)
        closed.append((series, ep))
        incident = incident_of(ep, series, settings.alert_threshold)
        incident.ended = (buckets[-1] + grain).to_pydatetime()
        actions.append(("resolve", incident))
    for key in sorted(k for k in ruled_out if own_run and k not in watched):  # the same for a ruled-out run
        ruled.ended.append((ruled_out.pop(key), (buckets[-1] + grain).isoformat()))
    _write_episode_spans(settings, s3, episodes, closed, actions, chain)
    _write_ruled_out_spans(settings, s3, ruled_out, ruled.ended, chain)
    evidence_uri = _write_evidence(settings, s3, evidence, buckets, start, shard, step=end - start)
    blind_action = _track_blind(blind, blind_keys, buckets, settings, shard)
    from forewarn import quality

    model_actions = quality.track(memory, names, buckets[-1].to_pydatetime() + grain)

    opened = updated = resolved = 0
    labelled: dict[str, Any] = {"resolved": 0, "silenced": 0}
    acknowledged = 0
    model_counts = {"opened": 0, "resolved": 0, "reported_late": 0, "closed": 0}
    if open_incidents:
        routes = {series: applied(series_rules, series).sinks for series in {i.series for _, i in actions} | set(episodes)}

        def routed(series: str) -> list[IncidentSink]:
            return routed_sinks(sinks, routes.get(series))

        labelled = _apply_labels(settings, s3, sinks, episodes, failures, buckets[-1] + grain)
        resolved += labelled["resolved"]
        quiet = {series for series, ep in episodes.items() if ep.label} | {series for series, ep in closed if ep.label}
        held = set(labelled.pop("held"))  # inside a maintenance window or snoozed now: no updates
        labelled["held"] = len(held)
        acknowledged = _apply_acks(settings, s3, routed, episodes, failures, buckets[-1] + grain)
        held |= {series for series, ep in episodes.items() if ep.acked}  # someone is on it: no updates
        opened_now = set()
        for kind, incident in actions:
            incident.evidence_uri, incident.dashboard_url = evidence_uri, dashboard_url
            if kind != "resolve" and plan.sets:  # which dimension moved
                ep = episodes.get(incident.series)  # named by accumulate, over the episode so far
                incident.contributors = list(ep.explained.get("named", [])) if ep is not None else []
            if incident.series in quiet or (kind == "update" and incident.series in held):
                continue  # an operator labelled it, or asked for quiet: recorded, not sent
            if kind == "open":
                new, complete = open_incident(settings, s3, routed(incident.series), incident, failures)
                opened += new
                if incident.series in episodes:
                    episodes[incident.series].reported = complete
                opened_now.add(incident.series)
            elif kind == "update":
                updated += update_incident(settings, s3, sinks, incident, failures)
            else:
                note = ("closed by forewarn: the series is no longer forecast (the day's training run has none for it), "
                        "so nothing is judged that could end it") if incident.series in orphaned else None
                resolved += resolve_incident(settings, s3, sinks, incident, failures, note=note)
        for series, ep in sorted(episodes.items()):
            if not ep.reported and series not in opened_now | held | waiting:  # a failed sink, a crash, or an episode a gap replay found
                incident = incident_of(ep, series, settings.alert_threshold)
                incident.evidence_uri, incident.dashboard_url = evidence_uri, dashboard_url
                incident.contributors = list(ep.explained.get("named", []))
                new, ep.reported = open_incident(settings, s3, routed(series), incident, failures)
                opened += new
                reconciled["reported_late"] += new
        model_counts = _model_alerts(settings, s3, sinks, series_rules, names, memory, model_actions, failures, shard,
                                     buckets[-1].to_pydatetime() + grain, first=buckets[0].to_pydatetime())
        opened += model_counts["opened"]
        resolved += model_counts["resolved"]
        if blind_action is not None:
            kind, incident = blind_action
            incident.evidence_uri, incident.dashboard_url = evidence_uri, dashboard_url
            if kind == "open":
                new, complete = open_incident(settings, s3, sinks, incident, failures)
                opened += new
                blind["reported"] = complete
            else:
                resolved += resolve_incident(settings, s3, sinks, incident, failures)

    health = _health(settings, evidence, actuals, runs, known, blind_keys, buckets, end, len(unforecast))
    data = metric_data(evidence, settings.cloudwatch_metric_list) + health_metric_data(health, start)
    precision = _label_precision(settings, s3, start, end, shard) if open_incidents else {}
    data += [{"MetricName": "LabelPrecision", "Dimensions": [{"Name": "Series", "Value": series}], "Timestamp": start,
              "Value": real / total, "Unit": "None"} for series, (real, total) in precision.items()]
    metrics = put_metrics(cloudwatch, settings.cloudwatch_namespace, data, now) if data else {"sent": 0}
    moment_doc = {"moment": end.isoformat(), "chain": chain, "blind": blind or None}
    write_state(settings, s3, end, State(names, memory, episodes, moment_doc, ruled_out), chain, shard)
    summary = {
        "interval": [start.isoformat(), end.isoformat()],
        "chain": chain,
        "shard": shard,
        "state_from": None if found is None else found.moment.isoformat(),
        "state_chain": None if found is None else found.chain,
        "replayed_buckets": int((buckets < first_live).sum()),
        "bridged": bridged,
        "scored": int(len(evidence)),
        "anomalous": int((evidence["anomalous"] != 0).sum()) if len(evidence) else 0,
        "cold_start": int(evidence["cold_start"].sum()) if len(evidence) else 0,
        "episodes_opened": sum(1 for k, _ in actions if k == "open"),
        "episodes_resolved": sum(1 for k, _ in actions if k == "resolve"),
        "episodes_updated": sum(1 for k, _ in actions if k == "update"),
        "incidents_opened": opened,
        "incidents_updated": updated,
        "incidents_resolved": resolved,
        "reconciled": reconciled,
        "routing_problems": misrouted,
        "labelled": labelled,
        "acknowledged": acknowledged,
        "label_precision": {series: f"{real}/{total}" for series, (real, total) in precision.items()},
        "model_quality": {**quality.figures(memory, names), "opened": sum(k == "open" for k, _ in model_actions),
                          "resolved": sum(k == "resolve" for k, _ in model_actions),
                          "delivered_late": model_counts["reported_late"], "closed_orphans": model_counts["closed"]},
        "forecast_runs": runs["runs"],
        "missing_forecast_days": runs["missing_days"],
        "health": health,
        "state_warmed_from_backtests": found is None or afresh,
        "metrics": metrics,
        "evidence": evidence_uri,
        "sink_failures": failures,
        "keys": sorted(set(zip(evidence["series"], evidence["metric"], strict=True))),
    }
    log.info("compared %s: %s", start.isoformat(), {k: v for k, v in summary.items() if k != "keys"})
    if failures:
        raise SinkFailed(f"{len(failures)} incident sink call(s) failed (everything else is written; a retry repeats only "
                         f"these): {'; '.join(failures)}")
    return summary


def _label_precision(settings: Settings, s3: Any, start: datetime, end: datetime, shard: int | None) -> dict[str, tuple[int, int]]:
    """Once an hour (the interval that holds the hour's start), per series with labelled
    episodes in the past week: real ones over labelled ones, published as ``LabelPrecision``."""
    from forewarn.labels import read_labels, weekly_precision

    hour = start.replace(minute=0, second=0, microsecond=0)
    boundary = hour if hour == start else hour + HOUR
    if not start <= boundary < end:
        return {}
    labels, _ = read_labels(settings, s3)
    mine = None if shard is None else (lambda series: shard_of(series, settings.compare_shards) == shard)
    return weekly_precision(labels, end, mine)


def _apply_labels(settings: Settings, s3: Any, sinks: list[IncidentSink], episodes: dict[str, Episode],
                  failures: list[str], now: pd.Timestamp) -> dict[str, Any]:
    """Operators' say on open episodes. One that began inside a maintenance window of its series
    (``maintenance/``), or that a label (``labels/``) calls ``not_anomaly``, ``expected`` or
    ``new_normal`` — by its name, or by a range of its series that reaches into it — is not
    sent, or if it was, is resolved in every sink with the reason (``real`` changes nothing).
    Either way it goes on silently until it ends. While a window (or a snooze) of its series is
    on, an episode reported before it sends no updates (``held``; its resolution still goes
    out). Both are read only while an episode is open."""
    from forewarn.labels import read_labels, verdict
    from forewarn.maintenance import read_windows

    pending = {series: ep for series, ep in episodes.items() if not ep.label}
    out: dict[str, Any] = {"resolved": 0, "silenced": 0, "held": []}
    if not episodes:
        return out
    windows, _ = read_windows(settings, s3)
    out["held"] = sorted(series for series in episodes if any(w.covers(series, now.to_pydatetime()) for w in windows))
    if not pending:
        return out
    labels, _ = read_labels(settings, s3)
    for series, ep in sorted(pending.items()):
        started = datetime.fromisoformat(ep.started)
        window = next((w for w in windows if w.covers(series, started)), None)
        label = verdict(labels, series, started, now.to_pydatetime(), ep.id)
        if window is not None:
            ep.label = "maintenance"
            note = f"inside maintenance window {window.series}" + (f": {window.note}" if window.note else "")
        elif label is not None and label.kind != "real":
            ep.label = label.kind
            note = f"labelled {label.kind}" + (f" by {label.by}" if label.by else "") + (f": {label.note}" if label.note else "")
        else:
            continue
        incident = incident_of(ep, series, settings.alert_threshold)
        incident.ended, incident.resolution = now.to_pydatetime(), note
        if resolve_incident(settings, s3, sinks, incident, failures, note=note):
            out["resolved"] += 1
        elif not read_record(settings, s3, incident.token):
            out["silenced"] += 1  # nobody was told: nobody will be
        ep.reported = True
    return out


def _model_alerts(settings: Settings, s3: Any, sinks: list[IncidentSink], series_rules: list[Any], names: list[str],
                  memory: Memory, actions: list[tuple[str, Incident]], failures: list[str], shard: int | None,
                  at: datetime, first: datetime | None = None) -> dict[str, int]:
    """The model-quality alerts' side effects: open each new one in its series' routed sinks and
    resolve each recovered one everywhere it is held; deliver again any still-degraded row's
    alert a failed sink left incomplete; and close an alert the registry holds open that the
    memory no longer does (the series is no longer forecast, or its state was lost), unless it
    started at or after ``first``, the first bucket this run judges: a rerun of an earlier
    interval judges from a state older than the alert, which the live state still holds."""
    from forewarn import quality
    from forewarn.series_settings import applied, routed_sinks

    counts = {"opened": 0, "resolved": 0, "reported_late": 0, "closed": 0}

    def where(series: str) -> list[IncidentSink]:
        return routed_sinks(sinks, applied(series_rules, series).sinks)

    for kind, incident in actions:
        if kind == "open":
            counts["opened"] += open_incident(settings, s3, where(incident.series), incident, failures)[0]
        else:
            counts["resolved"] += resolve_incident(settings, s3, sinks, incident, failures)
    row = {name: i for i, name in enumerate(names)}
    acted = {incident.token for _, incident in actions}
    full, coverage, error = quality.rolling(memory)
    for i in np.flatnonzero(memory.q_since > 0):
        incident = quality.incident(names[i], float(memory.q_since[i]), float(coverage[i]), float(error[i]))
        if incident.token not in acted:  # idempotent: only sinks that do not hold it yet are called
            counts["reported_late"] += open_incident(settings, s3, where(incident.series), incident, failures)[0]
            acted.add(incident.token)
    for token, series in sorted(open_tokens(settings, s3).items()):
        if token in acted or (shard is not None and shard_of(series, settings.compare_shards) != shard):
            continue
        record = read_record(settings, s3, token)
        facts = record.get("facts") or {}
        episode = str(facts.get("episode", ""))
        if MODEL_QUALITY_MARK not in episode or record.get("status") == "resolved":
            continue
        metric = episode.split(MODEL_QUALITY_MARK, 1)[1].split("|", 1)[0]
        since = datetime.fromisoformat(facts["started"]).timestamp()
        if first is not None and since >= first.timestamp():
            continue  # younger than the state this run judges from: not this run's to close
        i = row.get(f"{series}|{metric}")
        if i is not None and abs(float(memory.q_since[i]) - since) < 1:
            continue  # held by the memory: its own track resolves it
        orphan = quality.incident(f"{series}|{metric}", since, float(facts.get("actual", 0.0)), 0.0)
        orphan.ended = at
        counts["closed"] += resolve_incident(settings, s3, sinks, orphan, failures,
                                             note="closed by forewarn: the comparison no longer judges this forecast's quality "
                                                  "(the series is no longer forecast, or its state was lost)")
    return counts


def _apply_acks(settings: Settings, s3: Any, routed: Any, episodes: dict[str, Episode], failures: list[str],
                at: pd.Timestamp) -> int:
    """Tell the sinks of each open episode an operator acknowledged (``acks/``) once; from then
    on its updates are held. Returns how many were acknowledged now."""
    from forewarn.acks import read_acks
    from forewarn.registry import acknowledge_incident

    waiting = {ep.id: series for series, ep in episodes.items() if not ep.acked and ep.reported}
    if not waiting:
        return 0
    acks, _ = read_acks(settings, s3)
    told = 0
    for episode_id, series in sorted(waiting.items()):
        ack = acks.get(episode_id)
        if ack is None:
            continue
        ep = episodes[series]
        incident = incident_of(ep, series, settings.alert_threshold)
        incident.acknowledgement, incident.updated = ack.text, at.to_pydatetime()
        before = len(failures)
        told += acknowledge_incident(settings, s3, routed(series), incident, failures)
        if len(failures) == before:
            ep.acked = ack.text
    return told


def merge_span(known: dict[str, Any] | None, record: dict[str, Any]) -> dict[str, Any]:
    """An episode's span record as a run writes it (``record``) merged with the one already
    stored (``known``), so it never shrinks: the later last anomalous bucket, every metric that
    deviated, and an end once one was recorded (the later of two). A rerun of an early interval
    (an Airflow clear, a backfill) sees less of the episode than the run that grew or ended it;
    without the merge, training would learn the rest of the outage as normal."""
    if not known or known.get("episode") != record.get("episode"):
        return record
    out = dict(record)
    out["last_anomalous"] = max(known["last_anomalous"], record["last_anomalous"], key=datetime.fromisoformat)
    out["metrics"] = sorted(set(known.get("metrics") or []) | set(record.get("metrics") or []))
    ends = [e for e in (known.get("ended"), record.get("ended")) if e]
    out["ended"] = max(ends, key=datetime.fromisoformat) if ends else None
    if known.get("chain") == "live":
        out["chain"] = "live"  # a backfill's rewrite does not make a live episode a backfill's
    return out


def _write_episode_spans(settings: Settings, s3: Any, episodes: dict[str, Episode], closed: list[tuple[str, Episode]],
                         actions: list[tuple[str, Incident]], chain: str) -> int:
    """Record each episode's span when it opens, changes (a deviation joins, the impact moves),
    grows into a new hour, and ends (``episodes/``, one object per episode): training keeps
    those buckets out of the history it fits, so an outage is not learnt as normal (an episode
    still open is kept out up to an hour after the last anomalous bucket its record says, so a
    record nobody closes, such as one whose state was lost, cannot hide more). Both chains write
    them (a backfill finds anomalies in the history too); the key is the episode's, so a rerun
    rewrites it, merged with what is there (``merge_span``): rerunning an interval that an
    episode spans never shrinks the record a later run grew or ended."""
    ended = {inc.series: inc.ended.isoformat() for kind, inc in actions if kind == "resolve" and inc.ended is not None}
    changed = {inc.series for kind, inc in actions if kind in ("open", "update")}
    changed |= {series for series, ep in episodes.items() if ep.last_anomalous[:13] != ep.span_written[:13]}
    records = [span_record(series, ep, None, chain) for series, ep in sorted(episodes.items()) if series in changed]
    records += [span_record(series, ep, ended.get(series), chain) for series, ep in closed]
    for series, ep in episodes.items():
        if series in changed:
            ep.span_written = ep.last_anomalous

    return _put_spans(settings, s3, records)


def _put_spans(settings: Settings, s3: Any, records: list[dict[str, Any]]) -> int:
    """Write span records (``episodes/``), each merged with the one stored under its key
    (``merge_span``), so a rerun never shrinks what a later run wrote."""

    def put(record: dict[str, Any]) -> None:
        key = episode_key(datetime.fromisoformat(record["started"]), token_of(record["episode"]))
        try:
            known = json.loads(s3.get_object(Bucket=settings.bucket, Key=key)["Body"].read())
        except s3.exceptions.NoSuchKey:
            known = None
        s3.put_object(Bucket=settings.bucket, Key=key, Body=json.dumps(merge_span(known, record), sort_keys=True).encode())

    if len(records) > 1:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put, records))
    elif records:
        put(records[0])
    return len(records)


def _write_ruled_out_spans(settings: Settings, s3: Any, runs: dict[str, RuledOut], ended: list[tuple[RuledOut, str]],
                           chain: str) -> int:
    """Record each ruled-out run (``episodes.RuledOut``) as a span training keeps out
    (``episodes/``, the records ``train.episode_spans`` reads), as an episode's is: when it
    opens, grows into a new hour and ends, one object per run, keyed by its first bucket, so a
    rerun rewrites it (merged, never shrunk). The rule says what to be told of, not what is
    normal: learnt, a burst on a series watched for drops made the next run's bands 27 times
    wider and hid the next day's drop."""
    records = [ruled_out_record(run, None, chain) for _, run in sorted(runs.items())
               if run.last_deviating[:13] != run.span_written[:13]]
    records += [ruled_out_record(run, stamp, chain) for run, stamp in ended]
    for run in runs.values():
        run.span_written = run.last_deviating
    return _put_spans(settings, s3, records)


def few_events_widening(keys: list[tuple[str, str]], mean: np.ndarray, lower: np.ndarray, actual: np.ndarray,
                        meaning: list) -> np.ndarray | None:
    """Per key and bucket (``mean``, ``lower`` (95%) and ``actual`` are keys x buckets), the factor
    (at least 1) by which the band of a metric computed from the bucket's events (a mean,
    standard deviation or percentile: ``MetricMeaning`` "level") widens where the bucket holds
    fewer events than its series' count forecast expected there: ``sqrt(expected / events)``,
    with the events counted as at least the count band's lower bound. A mean of n events varies
    as 1/sqrt(n), and its band, fitted to the means alone, is as wide at a bucket of 2 events as at
    one of 20: clean value means were anomalous in the buckets with fewest events
    (``benchmarks/README.md``, "A whole day"). A count below its band is an anomaly of its own,
    so the band widens no more than at that bound: ``sqrt(expected / lower)``, near 1 for a busy
    series, where a band is mostly the level's own variation and hardly the sampling noise of a
    mean (a quarter of its orders whose average rose by half is still found), and 2 for a series
    expecting 6 events (its band from 1.5) whose bucket held one. None where nothing
    widens (no level metric judged beside its series' count)."""
    where = {key: i for i, key in enumerate(keys)}
    level = [i for i, (s_, _) in enumerate(keys)
             if meaning[i] is not None and meaning[i].kind == "level" and (s_, "event_count") in where]
    if not level:
        return None
    count_rows = [where[(keys[i][0], "event_count")] for i in level]
    expected, floor, events = mean[count_rows], lower[count_rows], actual[count_rows]
    with np.errstate(invalid="ignore", divide="ignore"):
        factor = np.sqrt(expected / np.fmax(events, floor))
        factor = np.where((events > 0) & (events < expected) & np.isfinite(factor), np.maximum(factor, 1.0), 1.0)
    out = np.ones(mean.shape)
    out[level] = factor
    return out


def _judge_all(keys: list[tuple[str, str]], buckets: pd.DatetimeIndex, forecasts: pd.DataFrame, actuals: pd.DataFrame,
               memory: Memory, rows: list[int], cfg: DetectorConfig, first_live: pd.Timestamp,
               rules: dict[str, np.ndarray] | None = None, keep_quality: bool = False) -> pd.DataFrame:
    """Every series' forecast and actuals on one grid (keys x buckets), judged in one vectorised
    pass (``keys[i]``'s detector is row ``rows[i]`` of ``memory``, updated); the evidence: a row
    per key and bucket a forecast covers (buckets no run forecasts are not judged: they count as
    blind). The metric's meaning says what a bucket with no events is: a zero for counts and
    sums, unknown otherwise; only counts are judged as Poisson counts."""
    if not keys:
        return pd.DataFrame(columns=EVIDENCE_COLUMNS)
    grid = pd.MultiIndex.from_tuples([(s_, m_, b) for s_, m_ in keys for b in buckets], names=["series", "metric", "bucket_start"])
    band = forecasts.set_index(["series", "metric", "bucket_start"])[["mean", "lower_95", "upper_95"]].reindex(grid)
    mean, lower, upper = (band[c].to_numpy(float).reshape(len(keys), len(buckets)) for c in ("mean", "lower_95", "upper_95"))
    names = sorted({s_ for s_, _ in keys})
    at = pd.MultiIndex.from_product([names, buckets], names=["series", "bucket_start"])
    seen = actuals.set_index(["series", "bucket_start"]).reindex(at) if len(actuals) else pd.DataFrame(index=at)
    row_of = {name: i for i, name in enumerate(names)}
    got = {m: (seen[m].to_numpy(float) if m in seen else np.full(len(at), np.nan)).reshape(len(names), len(buckets))
           for m in {m for _, m in keys}}
    actual = np.stack([got[m_][row_of[s_]] for s_, m_ in keys])
    meaning = [METRIC_MEANINGS.get(m_) for _, m_ in keys]
    zero = np.array([bool(x and x.zero_when_missing) for x in meaning])
    actual[zero] = np.nan_to_num(actual[zero], nan=0.0)
    plain = lower, upper  # the forecast's own band: what the model-quality figures judge
    widen = few_events_widening(keys, mean, lower, actual, meaning)
    if widen is not None:
        lower, upper = mean - widen * (mean - lower), mean + widen * (upper - mean)
    counts = np.array([bool(x and x.poisson) for x in meaning])
    rows_ = np.asarray(rows, dtype=np.int64)
    whole = rows_.size == len(memory) and bool((rows_ == np.arange(rows_.size)).all())
    part = memory if whole else memory.take(rows_)
    likelihood, z = score_many(actual, mean, lower, upper, part, cfg, counts, None if rules is None else rules["threshold"])
    has = np.isfinite(mean)
    k_idx, t_idx = np.nonzero(has)
    anomalous = np.where(likelihood >= cfg.threshold, np.where(z > 0, 1, -1), 0)
    if rules is not None:  # the per-series settings: threshold, direction, smallest deviation, judged metrics
        gap = np.abs(actual - mean)
        with np.errstate(invalid="ignore"):
            worth = (gap >= rules["min_abs"][:, None]) & (gap >= rules["min_rel"][:, None] * np.abs(mean))
        sign = np.where(z > 0, 1, -1)
        wanted = (rules["direction"][:, None] == 0) | (rules["direction"][:, None] == sign)
        flagged = (likelihood >= rules["threshold"][:, None]) & worth & wanted & rules["judged"][:, None]
        anomalous = np.where(flagged, sign, 0)
    if keep_quality:  # the forecast's rolling quality (forewarn.quality), from the same buckets
        from forewarn import quality

        # left out: what the detector found anomalous (whatever the per-series rules then alert
        # on: an outage on an above-only series is still not the model's fault), and metrics the
        # rules do not judge
        flagged_raw = (likelihood >= cfg.threshold).astype(int)
        if rules is not None:
            flagged_raw = np.where(rules["judged"][:, None], flagged_raw, 1)
        with np.errstate(invalid="ignore"):
            plain_z = z if widen is None else np.clip(standardised(actual, mean, *plain), -MAX_DEVIATION, MAX_DEVIATION)
        quality.update(part, np.arange(len(keys)), actual, *plain, plain_z, flagged_raw)
    if not whole:
        for name, a in part.arrays().items():
            getattr(memory, name)[rows_] = a
    series = np.array([s_ for s_, _ in keys], dtype=object)
    metrics = np.array([m_ for _, m_ in keys], dtype=object)
    stamps = buckets[t_idx]
    return pd.DataFrame({
        "series": series[k_idx], "metric": metrics[k_idx], "bucket_start": stamps, "actual": actual[has], "mean": mean[has],
        "lower_95": lower[has], "upper_95": upper[has], "deviation": z[has], "likelihood": likelihood[has],
        "anomalous": anomalous[has].astype(int), "cold_start": (part.scored == 0)[k_idx], "late": np.asarray(stamps < first_live),
    }, columns=EVIDENCE_COLUMNS)


def _episode_rows(evidence: pd.DataFrame, episodes: dict[str, Episode], ruled: RuledOutRuns) -> list[dict[str, Any]]:
    """The evidence rows episodes and ruled-out runs are tracked on: those of series with a
    bucket the detector or the rules flagged, an open episode or an open run (a calm bucket of
    any other series changes nothing)."""
    if evidence.empty:
        return []
    flagged = set(evidence.loc[(evidence["anomalous"] != 0) | (evidence["likelihood"] >= ruled.threshold), "series"])
    flagged |= set(episodes) | {run.series for run in ruled.runs.values()}
    return evidence[evidence["series"].isin(flagged)].to_dict("records")


def _write_evidence(settings: Settings, s3: Any, evidence: pd.DataFrame, buckets: pd.DatetimeIndex, start: datetime,
                    shard: int | None = None, step: timedelta | None = None) -> str:
    """The evidence of the interval, and of each replayed interval before it (intervals as long
    as this run's, ``step``), under its own key."""
    step = pd.Timedelta(step if step is not None else timedelta(minutes=settings.compare_minutes))
    first = pd.Timestamp(start).tz_convert("UTC")
    bounds = [(first, pd.Timestamp.max.tz_localize("UTC"))]
    while bounds[-1][0] - step >= buckets[0]:
        bounds.append((bounds[-1][0] - step, bounds[-1][0]))
    for lo, hi in bounds:
        part = evidence[(evidence["bucket_start"] >= lo) & (evidence["bucket_start"] < hi)] if len(evidence) else evidence
        s3.put_object(Bucket=settings.bucket, Key=evidence_key(settings, lo.to_pydatetime(), shard),
                      Body=parquet_bytes(_evidence_table(part.reset_index(drop=True))))
    return settings.s3_uri(evidence_key(settings, start, shard))


def _adopt_lost_episodes(settings: Settings, s3: Any, sinks: list[IncidentSink], episodes: dict[str, Episode],
                         failures: list[str], first: pd.Timestamp, shard: int | None = None) -> dict[str, int]:
    """Episodes open in the sinks, started before ``first`` (the first bucket this run judges),
    that the state does not hold (it was lost): adopted when their series has no episode, else
    closed with a note. One that started later is this run's to find again (a rerun)."""
    held = {token_of(ep.id) for ep in episodes.values()}
    counts = {"adopted": 0, "closed": 0, "resolved_late": 0}
    for token, series in sorted(open_tokens(settings, s3).items()):
        if token in held or series == BLIND_SERIES or (shard is not None and shard_of(series, settings.compare_shards) != shard):
            continue
        record = read_record(settings, s3, token)
        facts = record.get("facts")
        if not facts or record.get("status") == "resolved" or pd.Timestamp(facts["started"]) >= first:
            continue
        if record.get("resolving"):  # a run decided it ended; a sink failed or the run died before all knew
            incident = incident_of(adopt(facts), series, settings.alert_threshold)
            ended = record["resolving"].get("ended")
            incident.ended = datetime.fromisoformat(ended) if ended else None
            counts["resolved_late"] += resolve_incident(settings, s3, sinks, incident, failures, note=record["resolving"].get("note"))
            continue
        if MODEL_QUALITY_MARK in str(facts.get("episode", "")):  # a model-quality alert: _model_alerts keeps those
            continue
        if series not in episodes:
            episodes[series] = adopt(facts)
            counts["adopted"] += 1
            log.warning("episode %s was open in the sinks but not in the state: adopted", facts["episode"])
            continue
        incident = incident_of(adopt(facts), series, settings.alert_threshold)
        note = f"closed by forewarn: its state had lost this episode, and judges {series} as episode {episodes[series].id}"
        incident.ended = datetime.fromisoformat(episodes[series].started)
        counts["closed"] += resolve_incident(settings, s3, sinks, incident, failures, note=note)
    return counts


def _ever_trained(settings: Settings, s3: Any) -> bool:
    """Whether any training run has been published (one listing)."""
    return bool(s3.list_objects_v2(Bucket=settings.bucket, Prefix=settings.forecasts_prefix, MaxKeys=1).get("KeyCount", 0))


def _track_blind(blind: dict[str, Any], blind_keys: list[str], buckets: pd.DatetimeIndex,
                 settings: Settings, shard: int | None = None) -> tuple[str, Incident] | None:
    """forewarn's own episode: open while some series it watches have no forecast to be judged
    against, one incident ("forewarn is blind for N series since T"), resolved once all are
    judged again. ``blind`` (kept in the state) is updated in place."""
    if blind_keys and not blind:
        since = buckets[0].isoformat()
        scope = "blind" if shard is None else f"blind-shard{shard:03d}"
        blind.update(id=f"{BLIND_SERIES}|{scope}|{since[:16]}", since=since, series=len(blind_keys), reported=False,
                     **({} if shard is None else {"shard": shard}))
        return "open", _blind_incident(blind, blind_keys)
    if blind_keys:
        blind["series"] = max(int(blind.get("series", 0)), len(blind_keys))
        return ("open", _blind_incident(blind, blind_keys)) if not blind.get("reported") else None
    if blind:
        incident = _blind_incident(blind, [])
        incident.ended = buckets[0].to_pydatetime()
        blind.clear()
        return "resolve", incident
    return None


def _blind_incident(blind: dict[str, Any], blind_keys: list[str]) -> Incident:
    since = datetime.fromisoformat(blind["since"])
    n = int(blind["series"])
    where = "" if blind.get("shard") is None else f" in shard {blind['shard']}"
    headline = (f"forewarn is blind for {n} series{where} since {since:%Y-%m-%d %H:%M} UTC: no forecast covers them "
                "(check forewarn_train)")
    return Incident(episode=blind["id"], series=BLIND_SERIES, metric="forecast_coverage", started=since, direction="below",
                    actual=0.0, expected=1.0, lower=1.0, upper=1.0, likelihood=1.0, impact=2, evidence_uri="",
                    headline=headline, deviations=[{"metric": "forecast_coverage", "direction": "below", "since": blind["since"],
                                                    "actual": 0.0, "expected": 1.0, "lower_95": 1.0, "upper_95": 1.0,
                                                    "likelihood": 1.0, "blind": blind_keys[:50]}])


def _health(settings: Settings, evidence: pd.DataFrame, actuals: pd.DataFrame, runs: dict[str, Any], known: set[str],
            blind_keys: list[str], buckets: pd.DatetimeIndex, end: datetime, unforecast: int = 0) -> dict[str, Any]:
    """The pipeline's own figures for the interval: buckets judged against those expected (every
    series forewarn knows, every bucket; none expected and none judged is a ratio of 1), minutes
    since the newest bucket with events, hours since the newest forecast run's end, and the series
    with events that no forecast covers (``unforecast``: new ones, until a training run takes them
    up)."""
    expected = len(known) * len(buckets)
    newest = actuals["bucket_start"].max() if len(actuals) else None
    fresh = None if newest is None or pd.isna(newest) else (pd.Timestamp(end) - newest).total_seconds() / 60 - settings.grain_seconds / 60
    age = None if runs["newest_run"] is None else (end - datetime.fromisoformat(runs["newest_run"])).total_seconds() / 3600
    return {"buckets_judged": int(len(evidence)), "buckets_expected": int(expected),
            "judged_ratio": 1.0 if expected == 0 else round(len(evidence) / expected, 6), "blind_series": len(blind_keys),
            "data_freshness_minutes": None if fresh is None else round(max(fresh, 0.0), 3),
            "forecast_age_hours": None if age is None else round(age, 3), "unforecast_series": int(unforecast)}


def health_metric_data(health: dict[str, Any], start: datetime) -> list[dict[str, Any]]:
    """The pipeline-health metrics, dimension ``Pipeline=forewarn``."""
    dims = [{"Name": "Pipeline", "Value": "forewarn"}]
    names = (("judged_ratio", "BucketsJudgedRatio"), ("blind_series", "BlindSeries"),
             ("data_freshness_minutes", "DataFreshnessMinutes"), ("forecast_age_hours", "ForecastAgeHours"),
             ("unforecast_series", "UnforecastSeries"))
    return [{"MetricName": name, "Dimensions": dims, "Timestamp": start, "Value": float(health[key]), "Unit": "None"}
            for key, name in names if health[key] is not None]


def _evidence_table(evidence: pd.DataFrame):
    import pyarrow as pa

    if evidence.empty:
        return pa.table({"series": pa.array([], pa.string())})
    return pa.Table.from_pandas(evidence, preserve_index=False)


def metric_data(evidence: pd.DataFrame, names: list[str] | None = None) -> list[dict[str, Any]]:
    """Per series and metric, the CloudWatch metrics ``names`` (default: all of
    ``CLOUDWATCH_METRICS``), dimensions ``Series`` and ``Metric`` and, for a roll-up series,
    one per dimension key (``dimensions.cloudwatch_dimensions``)."""
    from forewarn.dimensions import cloudwatch_dimensions

    chosen = [(CLOUDWATCH_METRICS[n], n) for n in (list(CLOUDWATCH_METRICS) if names is None else names)]
    if evidence.empty or not chosen:
        return []
    series, metrics = evidence["series"].tolist(), evidence["metric"].tolist()
    stamps = [t.to_pydatetime() for t in evidence["bucket_start"]]
    values = {column: evidence[column].to_numpy(float).tolist() for column, _ in chosen}
    data = []
    made: dict[tuple[str, str], list[dict[str, str]]] = {}
    for i in range(len(evidence)):
        pair = (series[i], metrics[i])
        dims = made.get(pair) or made.setdefault(pair, cloudwatch_dimensions(*pair))
        data.extend({"MetricName": name, "Dimensions": dims, "Timestamp": stamps[i], "Value": values[column][i], "Unit": "None"}
                    for column, name in chosen)
    return data


def read_evidence(s3: Any, bucket: str, key: str) -> pd.DataFrame:
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read())).to_pandas()

