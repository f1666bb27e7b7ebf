"""``forewarn demo``: the pipeline end to end on the embedded stack, through real Airflow runs.

1. start the stack (moto on loopback, resources, Kinesis -> Firehose forwarder);
2. load 28 days of history straight into the landing zone, and send 70 live minutes, with the
   scenario's anomalies, duplicates, late and malformed events, through Kinesis -> Firehose -> S3;
3. run ``forewarn_aggregate`` with ``airflow dags test``: one scheduled interval, twice (the
   second must leave every object byte-identical), then one range run over the whole stretch;
   then ``forewarn_train`` for the day the live stretch starts in;
4. check the aggregates against what was produced, print the summary, draw the report.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from forewarn import producer
from forewarn.aggregate import (
    HOUR,
    aggregate_key,
    ceil_hour,
    floor_hour,
    range_windows,
    scheduled_window,
    summary_key,
)
from forewarn.config import Settings
from forewarn.dimensions import child_values, words
from forewarn.layout import manifest_key, rejects_prefix
from forewarn.local import stack
from forewarn.local.airflow import airflow_env, dags_test, dags_test_many, ensure_db
from forewarn.query import hour_range
from forewarn.registry import list_records
from forewarn.synth import expected_totals, load_scenario, plan_landing
from forewarn.train import day_floor, read_parquet_uri


@dataclass
class Step:
    out: Any
    started: float = field(default_factory=time.monotonic)

    def done(self, text: str) -> None:
        self.out(f"   {text}  [{time.monotonic() - self.started:.1f}s]")


def run_demo(
    home: Path,
    port: int,
    history_days: int = 28,
    live_minutes: int = 70,
    scenario_path: str | None = None,
    keep_stack: bool = False,
    out: Any = print,
) -> int:
    """Returns 0 when every check passed."""
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "demo" / "airflow.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text("")
    settings = Settings.load({"engine": "duckdb", "settle_minutes": 0})
    started_here = stack.read_state(home) is None
    t0 = time.monotonic()

    out("forewarn demo: the pipeline end to end on the embedded stack")
    step = Step(out)
    out(f"1. embedded AWS stack on 127.0.0.1:{port}")
    state = stack.up(port=port, home=home)
    clients = stack.local_clients(state["port"])
    step.done(f"moto server pid {state['pid']}; bucket, Kinesis stream, Firehose, Glue tables, SNS topic ready")
    try:
        now = time.time()
        live_start = now - live_minutes * 60
        trained_until = day_floor(datetime.fromtimestamp(live_start, UTC))
        history_start = (trained_until - timedelta(days=history_days)).timestamp()
        scenario = load_scenario(scenario_path, live_start=live_start)
        settings = dataclasses.replace(settings, rollups=scenario.rollups)

        step = Step(out)
        out(f"2. events: {len(scenario.series)} series, {history_days} days of history + {live_minutes} min live")
        history = plan_landing(scenario, history_start, live_start, settings.lookback_hours)
        producer.write_landing(clients.s3, settings.bucket, settings.raw_prefix, history)
        step.done(f"history: {len(history):,} lines written into the landing layout raw/YYYY/MM/DD/HH/")
        step = Step(out)
        live = plan_landing(scenario, live_start, now, settings.lookback_hours, seed_offset=1, send_at=now)
        before = stack.forwarded_count(home)
        sent = producer.send_plan(clients.client("kinesis"), settings.stream_name, live)
        _wait_forwarded(home, before + sent)
        step.done(f"live: {sent:,} records PutRecords -> Kinesis -> Firehose -> S3")
        plan = pd.concat([history, live], ignore_index=True)

        env = airflow_env(home, state["port"])
        env.update({"FOREWARN_INCIDENT_SINKS": "incident_manager,sns", "FOREWARN_COMPARE_DELAY_MINUTES": "0",
                    "FOREWARN_RESPONSE_PLAN_ARN": state["resources"]["response_plan"], "FOREWARN_ROLLUPS": scenario.rollups})
        step = Step(out)
        out("3. forewarn_aggregate through Airflow (SQLite metadata DB, DuckDB engine)")
        ensure_db(env, log=log_path)
        step.done("airflow db migrate")

        now_dt = datetime.fromtimestamp(now, UTC)
        interval_end = floor_hour(now_dt)
        window = scheduled_window(interval_end - HOUR, interval_end, settings.lookback_hours)
        step = Step(out)
        dags_test(env, "forewarn_aggregate", interval_end.isoformat(), log=log_path)
        first = _snapshot(clients.s3, settings, window)
        step.done(f"scheduled interval {interval_end - HOUR:%H:%M}-{interval_end:%H:%M}: {len(first)} objects written")
        step = Step(out)
        dags_test(env, "forewarn_aggregate", interval_end.isoformat(), log=log_path)
        second = _snapshot(clients.s3, settings, window)
        identical = sum(1 for k, digest in first.items() if second.get(k) == digest)
        rerun_ok = identical == len(first) == len(second)
        step.done(f"rerun of the same interval: {identical}/{len(first)} objects byte-identical")

        step = Step(out)
        since = datetime.fromtimestamp(history_start, UTC)
        until = ceil_hour(now_dt)
        conf = {"since": since.isoformat(), "until": until.isoformat(), "hours_per_task": 24}
        dags_test(env, "forewarn_aggregate", interval_end.isoformat(), conf=conf, log=log_path)
        windows = range_windows(since, until, settings.lookback_hours, 24)
        step.done(f"range run {since:%m-%d %H:%M} -> {until:%m-%d %H:%M}: {len(windows)} mapped tasks")

        step = Step(out)
        train_at = trained_until + timedelta(minutes=30)
        dags_test(env, "forewarn_train", train_at.isoformat(), log=log_path)
        models = read_models(clients.s3, settings, trained_until)
        step.done(f"forewarn_train for {trained_until:%Y-%m-%d}: {len(models)} fits on {history_days} days, "
                  f"forecasts {settings.horizon_hours} h ahead")
        out(_models_table(models))
        forecasts = read_forecasts(clients.s3, settings, trained_until)

        step = Step(out)
        every = settings.compare_minutes * 60  # the schedule's grid, as the scheduler runs it
        first = math.ceil(live_start / every) * every
        last = math.floor(now / every) * every
        stamps = [datetime.fromtimestamp(t + every, UTC).isoformat() for t in range(int(first), int(last), every)]
        durations = dags_test_many(env, "forewarn_compare", stamps, log=log_path)
        step.done(f"forewarn_compare over the live stretch: {len(durations)} runs of {settings.compare_minutes} minutes (dag.test)")
        incidents = read_incidents(clients, settings)
        detection = match_anomalies(scenario, incidents, settings.grain_seconds)
        out(_detection_table(detection, incidents))
        median_run = float(np.median(durations)) if durations else 0.0

        out("4. checks")
        aggregates = read_aggregates(clients.s3, settings, since, until)
        duplicates = read_duplicates(clients.s3, settings, windows)
        expected = expected_totals(plan, since.timestamp(), until.timestamp())
        checks = compare_totals(expected, aggregates[aggregates["series"].isin(expected["series"])], duplicates)
        out(_table(checks))
        rollups_ok, rollup_line = check_rollups(aggregates, expected, settings.rollup_sets)
        if rollup_line:
            out(rollup_line)
        totals_ok = bool(checks["match"].all()) and rollups_ok
        rejected = count_rejects(clients.s3, settings)
        expected_rejects = plan["expected_reason"].dropna().value_counts().to_dict()
        rejects_ok = rejected == expected_rejects
        out(f"   rejected lines set aside under s3://{settings.bucket}/{settings.errors_prefix}rejected/: "
            f"{sum(rejected.values())} {_fmt_counts(rejected)}")
        out(f"   expected from the producer: {sum(expected_rejects.values())} {_fmt_counts(expected_rejects)}"
            f"  {'OK' if rejects_ok else 'MISMATCH'}")
        dup_expected = int(checks["duplicates_expected"].sum())
        dup_seen = int(checks["duplicates"].sum())
        out(f"   duplicate copies counted once: {dup_seen} (produced {dup_expected})  {'OK' if dup_seen == dup_expected else 'MISMATCH'}")
        out(f"   rerun byte-identical: {'OK' if rerun_ok else 'NO'}")

        report = home / "demo" / "report.png"
        plot_report(aggregates, scenario, live_start, now, report, forecasts, incidents)
        out(f"   report: {report}")
        found = [d for d in detection if d["delay_min"] is not None]
        false_alarms = [i for i in incidents if not i["matched"]]
        delays = [d["delay_min"] for d in found]
        out(f"   incidents in Incident Manager (stand-in): {len(incidents)}, each also published to SNS; "
            f"read them with: aws ssm-incidents list-incident-records --endpoint-url {state['incidents_endpoint']}")
        out(f"   event-to-incident latency on schedule: a bucket is judged at most {settings.compare_minutes} min + "
            f"{settings.compare_wait_minutes} min wait after its end, and a compare run took {median_run:.1f} s here "
            f"(median of {len(durations)})")
        out(f"   data checks: {'OK' if totals_ok and rejects_ok and rerun_ok and dup_seen == dup_expected else 'FAILED'} "
            f"({time.monotonic() - t0:.0f}s; Airflow log {log_path})")
        ok = totals_ok and rejects_ok and rerun_ok and dup_seen == dup_expected and len(found) == len(detection) and len(false_alarms) <= 1
        out(f"demo: {len(found)}/{len(detection)} injected anomalies detected, {len(false_alarms)} false alarms, "
            f"median delay {np.median(delays) if delays else float('nan'):.0f} min")
        return 0 if ok else 1
    finally:
        if started_here and not keep_stack:
            stack.down(home)


def _wait_forwarded(home: Path, target: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while stack.forwarded_count(home) < target:
        if time.monotonic() > deadline:
            raise stack.StackError(f"the forwarder moved {stack.forwarded_count(home)} of {target} records in {timeout:.0f}s")
        time.sleep(0.2)


def _snapshot(s3: Any, settings: Settings, window: Any) -> dict[str, str]:
    """sha256 of every aggregate object the window rewrites."""
    digests = {}
    for hour in hour_range(window.out_start, window.out_end):
        key = aggregate_key(settings, hour)
        body = s3.get_object(Bucket=settings.bucket, Key=key)["Body"].read()
        digests[key] = hashlib.sha256(body).hexdigest()
    return digests


def read_aggregates(s3: Any, settings: Settings, since: datetime, until: datetime) -> pd.DataFrame:
    frames = []
    for hour in hour_range(since, until):
        body = s3.get_object(Bucket=settings.bucket, Key=aggregate_key(settings, hour))["Body"].read()
        frames.append(pq.read_table(io.BytesIO(body)).to_pandas())
    return pd.concat(frames, ignore_index=True)


def read_models(s3: Any, settings: Settings, trained_until: datetime) -> list[dict[str, Any]]:
    manifest = json.loads(s3.get_object(Bucket=settings.bucket, Key=manifest_key(settings, trained_until))["Body"].read())
    models = []
    for uri in manifest["models"]:
        models.extend(json.loads(s3.get_object(Bucket=settings.bucket, Key=uri.split("/", 3)[3])["Body"].read()))
    return models


def read_forecasts(s3: Any, settings: Settings, trained_until: datetime) -> pd.DataFrame:
    manifest = json.loads(s3.get_object(Bucket=settings.bucket, Key=manifest_key(settings, trained_until))["Body"].read())
    return pd.concat([read_parquet_uri(s3, uri) for uri in manifest["batches"]], ignore_index=True)


def _models_table(models: list[dict[str, Any]]) -> str:
    lines = [f"   {'series':<22}{'metric':<13}{'model':<26}{'history':>8}{'val. MASE':>11}  notes"]
    for m in sorted(models, key=lambda m: (m["series"], m["metric"])):
        mase_text = "-" if m["validation_mase"] is None else f"{m['validation_mase']:.2f}"
        lines.append(f"   {m['series']:<22}{m['metric']:<13}{m['model']:<26}{m['history_points']:>8,}{mase_text:>11}  {'; '.join(m['warnings'])}")
    return "\n".join(lines)


def read_incidents(clients: Any, settings: Settings) -> list[dict[str, Any]]:
    """Every episode forewarn opened, from its registry, with the Incident Manager record."""
    s3 = clients.s3
    out = []
    records = {r["arn"]: r for r in clients.client("ssm-incidents").list_incident_records()["incidentRecordSummaries"]}
    for _, _, doc in list_records(s3, settings.bucket):
        facts = doc["facts"]
        arn = doc["refs"].get("incident_manager", {}).get("incident_record_arn")
        out.append({"series": facts["series"], "metric": facts["metric"], "started": pd.Timestamp(facts["started"]),
                    "direction": facts["direction"], "impact": facts["impact"], "status": doc["status"],
                    "updates": facts.get("revision", 0), "contributors": facts.get("contributors") or [],
                    "related": facts.get("related") or [], "record": records.get(arn, {}), "matched": False})
    return sorted(out, key=lambda i: i["started"])


def match_anomalies(scenario: Any, incidents: list[dict[str, Any]], grain: int) -> list[dict[str, Any]]:
    """Each injected anomaly: the first incident on its series that started within it (or up to
    three buckets before, a partially affected bucket), and the delay from its start to the end
    of that incident's first bucket. A regional one (``where``) is found only by one incident on
    its series naming the region as the top contributor (80% or more), its roll-up series having
    opened none of their own."""
    rows = []
    for a in scenario.anomalies:
        start = pd.Timestamp(a.start, unit="s", tz="UTC")
        end = pd.Timestamp(a.end, unit="s", tz="UTC")
        within = [i for i in incidents if start - pd.Timedelta(seconds=3 * grain) <= i["started"] < end]
        hit = next((i for i in within if i["series"] == a.series), None)
        where = None
        if a.where:  # a regional anomaly: found on its series, naming the region as the top contributor (80% or more)
            top = (hit or {}).get("contributors") or [{}]
            where = top[0] if top[0].get("dimensions") == a.where and top[0].get("share", 0) >= 0.8 else None
            for inc in within:  # the child that fell is the same cause, not a false alarm
                if child_values(a.series, inc["series"], tuple(a.where)) == a.where:
                    inc["matched"] = True
        if hit:
            hit["matched"] = True
        # one incident per cause: no roll-up series of it opened an incident of its own
        children = [i["series"] for i in within if a.where and i["series"] != a.series
                    and child_values(a.series, i["series"], tuple(a.where)) is not None]
        found = hit is not None and (not a.where or (where is not None and not children))
        delay = None if not found else max(0.0, (hit["started"] + pd.Timedelta(seconds=grain) - start).total_seconds() / 60)
        rows.append({"kind": a.kind, "series": a.series, "start": start, "duration_min": a.duration / 60,
                     "delay_min": delay, "incident": hit if found else None, "where": a.where, "named": where,
                     "said": None if hit is None else words(hit.get("contributors") or []) or "no roll-up named",
                     "children": children})
    return rows


def check_rollups(aggregates: pd.DataFrame, expected: pd.DataFrame, sets: tuple[tuple[str, ...], ...]) -> tuple[bool, str]:
    """Every roll-up set's series add up to their series' events (each demo event carries every
    key), and how many roll-up series there are."""
    if not sets:
        return True, ""
    totals = aggregates.groupby("series")["event_count"].sum()
    ok, count = True, 0
    for parent in expected["series"]:
        for keys in sets:
            kids = [s for s in totals.index if child_values(parent, s, keys) is not None]
            count += len(kids)
            if kids and int(totals[kids].sum()) != int(totals.get(parent, 0)):
                ok = False
    return ok, f"   roll-up series: {count}, each set's events add up to their series' total: {'OK' if ok else 'MISMATCH'}"


def _detection_table(detection: list[dict[str, Any]], incidents: list[dict[str, Any]]) -> str:
    lines = [f"   {'injected':<12}{'series':<22}{'at':>7}{'for':>6}  {'detected':<10}{'delay':>7}  incident"]
    for d in detection:
        inc = d["incident"]
        lines.append(
            f"   {d['kind']:<12}{d['series']:<22}{d['start']:%H:%M}{int(d['duration_min']):>5}m  "
            f"{'yes' if inc else 'NO':<10}{_minutes(d['delay_min']):>7}  "
            + ("" if not inc else f"{inc['metric']} {inc['direction']}, impact {inc['impact']}, {inc['status'].lower()}"
               + (f", {inc['updates']} update{'s' if inc['updates'] > 1 else ''}" if inc["updates"] else ""))
            + (f"; where: {words([d['named']])}" + (f", related {', '.join(inc['related'])}" if inc and inc["related"] else "")
               if d.get("named") and not d["children"] else (f"; {_wanted(d['where'])} not named as 80% in one incident (incident on the series: {d['said'] or 'none'}; "
                                       f"incidents of its own: {', '.join(d['children']) or 'none'})" if d.get("where") else ""))
        )
    for inc in incidents:
        if not inc["matched"]:
            lines.append(f"   {'FALSE ALARM':<12}{inc['series']:<22}{inc['started']:%H:%M}{'':>6}  {inc['metric']} {inc['direction']}")
    return "\n".join(lines)


def _wanted(where: dict[str, str]) -> str:
    return "/".join(f"{k}={v}" for k, v in where.items())


def _minutes(value: float | None) -> str:
    return "" if value is None else f"{value:.0f} min"


def read_duplicates(s3: Any, settings: Settings, windows: list[Any]) -> dict[str, int]:
    """Duplicate copies per series, from the run summaries the aggregation wrote."""
    counts: dict[str, int] = {}
    for window in windows:
        body = s3.get_object(Bucket=settings.bucket, Key=summary_key(settings, window))["Body"].read()
        for series, n in json.loads(body)["duplicates_by_series"].items():
            counts[series] = counts.get(series, 0) + n
    return counts


def compare_totals(expected: pd.DataFrame, aggregates: pd.DataFrame, duplicates: dict[str, int]) -> pd.DataFrame:
    seen = aggregates.groupby("series").agg(events=("event_count", "sum"), value_sum=("value_sum", "sum"))
    table = expected.set_index("series").rename(
        columns={"events": "events_expected", "value_sum": "value_sum_expected", "duplicates": "duplicates_expected"}
    )
    table = table.join(seen, how="outer").fillna(0)
    table["duplicates"] = pd.Series(duplicates, dtype="int64").reindex(table.index, fill_value=0)
    table["match"] = (table["events"] == table["events_expected"]) & (table["duplicates"] == table["duplicates_expected"]) & (
        (table["value_sum"] - table["value_sum_expected"]).abs() <= 1e-6 * table["value_sum_expected"].abs().clip(lower=1)
    )
    return table.reset_index()


def count_rejects(s3: Any, settings: Settings) -> dict[str, int]:
    counts: dict[str, int] = {}
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=settings.bucket, Prefix=rejects_prefix(settings)):
        for obj in page.get("Contents", []):
            for line in s3.get_object(Bucket=settings.bucket, Key=obj["Key"])["Body"].read().decode().splitlines():
                reason = json.loads(line)["reason"]
                counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items()))


def _fmt_counts(counts: dict[str, int]) -> str:
    return "(" + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ")"


def _table(checks: pd.DataFrame) -> str:
    lines = [f"   {'series':<22}{'events sent':>12}{'aggregated':>12}{'dup sent':>10}{'dup seen':>10}{'value sum':>16}  check"]
    for row in checks.itertuples():
        lines.append(
            f"   {row.series:<22}{int(row.events_expected):>12,}{int(row.events):>12,}{int(row.duplicates_expected):>10,}"
            f"{int(row.duplicates):>10,}{row.value_sum:>16,.2f}  {'OK' if row.match else 'MISMATCH'}"
        )
    return "\n".join(lines)


def complete_buckets(aggregates: pd.DataFrame, until: float) -> pd.DataFrame:
    """The aggregates of the buckets that had ended by ``until`` (epoch seconds, when the events
    stopped). The bucket still filling holds only its first minutes' events: drawn, a count falls
    to a fraction of its level at the right edge, which reads like an outage, and no comparison
    judged it (the demo compares complete buckets only)."""
    ends = aggregates["bucket_start"] + pd.to_timedelta(aggregates["grain_seconds"].astype("int64"), unit="s")
    return aggregates[ends <= pd.Timestamp(until, unit="s", tz="UTC")]


def plot_report(aggregates: pd.DataFrame, scenario: Any, live_start: float, until: float, path: Path,
                forecasts: pd.DataFrame | None = None, incidents: list[dict[str, Any]] | None = None) -> Any:
    """Per series: the last week (left) and the last hours around the live stretch (right)
    against the forecast's 95% band, with the live stretch shaded grey and the injected
    anomalies red, each up to the last bucket complete at ``until`` (``complete_buckets``).
    Returns the figure (closed), for a caller that looks at what was drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    specs = scenario.series
    fig, grid = plt.subplots(len(specs), 2, figsize=(14, 2.3 * len(specs)), squeeze=False,
                             gridspec_kw={"width_ratios": [2.2, 1]}, constrained_layout=True)
    live = pd.Timestamp(live_start, unit="s", tz="UTC")
    zoom_from = live - pd.Timedelta(hours=3)
    aggregates = complete_buckets(aggregates, until)
    for row, spec in zip(grid, specs, strict=True):
        data = aggregates[aggregates["series"] == spec.name].sort_values("bucket_start")
        metric = "event_count" if spec.kind == "count" else "value_mean"
        zoomed = data[data["bucket_start"] >= zoom_from]
        if forecasts is not None and len(zoomed):
            band = forecasts[(forecasts["series"] == spec.name) & (forecasts["metric"] == metric)]
            band = band[(band["bucket_start"] >= zoom_from) & (band["bucket_start"] <= zoomed["bucket_start"].max())]
            row[1].fill_between(band["bucket_start"], band["lower_95"], band["upper_95"], color="#2ca02c", alpha=0.2, lw=0, label="95% band")
            row[1].plot(band["bucket_start"], band["mean"], lw=0.8, color="#2ca02c", ls="--", label="forecast")
        week = data[data["bucket_start"] >= live - pd.Timedelta(days=7)]
        for inc in incidents or []:
            if inc["series"] == spec.name:
                row[1].axvline(inc["started"], color="#d62728", lw=1.2, ls=":")
                row[1].annotate("incident", (inc["started"], 0.02), xycoords=("data", "axes fraction"), fontsize=7, color="#d62728")
        for ax, part in ((row[0], week), (row[1], zoomed)):
            ax.plot(part["bucket_start"], part[metric], lw=0.9, color="#1f77b4", label="actual")
            end = part["bucket_start"].max() if len(part) else live
            ax.axvspan(live, end, color="#bbbbbb", alpha=0.35, lw=0)
            for a in scenario.anomalies:
                if a.series == spec.name:
                    a0, a1 = pd.Timestamp(a.start, unit="s", tz="UTC"), pd.Timestamp(a.end, unit="s", tz="UTC")
                    ax.axvspan(a0, min(a1, end), color="#d62728", alpha=0.25, lw=0)
                    ax.annotate(a.kind, (a0, 1), xycoords=("data", "axes fraction"), va="top", fontsize=8, color="#d62728")
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
        row[1].xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
        row[0].xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M"))
        row[0].set_ylabel(f"{spec.name}\n{metric}", fontsize=8)
    grid[0][0].set_title("aggregates per 5-minute bucket, last 7 days", fontsize=10)
    grid[0][1].set_title("last hours vs forecast (grey: live; red: injected)", fontsize=10)
    grid[0][1].legend(loc="lower left", fontsize=7)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return fig
