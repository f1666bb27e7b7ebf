"""The bodies of the DAGs' tasks: each takes plain values (interval bounds, params) and returns
small JSON-able results, so DAG files stay configuration and these stay testable."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from forewarn.aggregate import Window, batch_windows, by_reason, range_windows, run_window, scheduled_window
from forewarn.config import Settings

log = logging.getLogger(__name__)


def settings_for_run(params: dict[str, Any] | None = None) -> Settings:
    """Settings for a task: environment, then the ``forewarn_config`` Variable (read here, at run
    time, never at parse time), then the run's params that name settings."""
    from airflow.sdk import Variable

    text = Variable.get("forewarn_config", default=None)
    known = set(Settings.__dataclass_fields__)
    overrides = {k: v for k, v in (params or {}).items() if k in known}
    return Settings.from_json(text, overrides)


def max_map_length() -> int:
    """Airflow's ``[core] max_map_length``: the most tasks one list may map (a longer one fails
    the task that returns it)."""
    from airflow.sdk import conf

    return conf.getint("core", "max_map_length", fallback=1024)


def plan_aggregation(
    settings: Settings, start: datetime, end: datetime, since: str | None, until: str | None, hours_per_task: int,
    max_tasks: int = 1024,
) -> list[list[dict[str, str]]]:
    """The windows a run rewrites, in the batches its mapped tasks take: its scheduled window, or
    a manual range cut into chunks of ``hours_per_task`` hours, one a task, or as few
    consecutive ones a task as keep the run at ``max_tasks`` tasks (``max_map_length``)."""
    if since or until:
        if not (since and until):
            raise ValueError("give both `since` and `until` to re-aggregate a range, or neither for the run's interval")
        windows = range_windows(_parse(since), _parse(until), settings.lookback_hours, hours_per_task)
    else:
        windows = [scheduled_window(start, end, settings.lookback_hours)]
    planned = batch_windows(windows, max_tasks)
    if len(planned) < len(windows):
        log.warning("%d windows of %d hour(s) are more than Airflow maps (max_map_length %d): %d tasks of up to %d "
                    "consecutive windows each, every task within its execution timeout (a larger hours_per_task, or "
                    "a larger [core] max_map_length, for fewer windows a task)", len(windows), hours_per_task, max_tasks,
                    len(planned), len(planned[0]))
    return [[w.to_dict() for w in batch] for batch in planned]


def aggregate(settings: Settings, windows: list[dict[str, str]], force: bool = False) -> list[dict[str, Any]]:
    """Aggregate a mapped task's windows in turn; their summaries (``combine`` totals a run's)."""
    from forewarn.aggregate import make_engine
    from forewarn.aws import AwsClients

    clients = AwsClients.from_airflow(settings.aws_conn_id)
    engine = make_engine(settings, clients)
    summaries = []
    for window in windows:
        summary = run_window(settings, engine, clients.s3, Window.from_dict(window), force=force)
        summary.pop("objects")  # the S3 summary keeps the list; XCom keeps the numbers
        summaries.append(summary)
    return summaries


def combine(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over a run's windows. Event hours never overlap between windows; landing hours do,
    so rejects are merged by landing hour before they are counted."""
    total: dict[str, Any] = {"windows": len(summaries), "rows": 0, "events": 0, "duplicates": 0}
    by_hour: dict[str, dict[str, int]] = {}
    for s in summaries:
        for key in ("rows", "events", "duplicates"):
            total[key] += s[key]
        by_hour.update(s["rejected_by_hour"])
    total["rejected_by_reason"] = by_reason(by_hour)
    total["rejected"] = sum(total["rejected_by_reason"].values())
    return total


def _parse(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time such as 2026-11-20T00:00:00Z") from None


def train_pending(settings: Settings, trained_until: datetime) -> list[str]:
    """The hours of the trained day whose aggregation has not run yet (``train.hours_not_aggregated``)."""
    from forewarn.aws import AwsClients
    from forewarn.train import hours_not_aggregated

    return hours_not_aggregated(settings, AwsClients.from_airflow(settings.aws_conn_id).s3, trained_until)


def train_gather(settings: Settings, trained_until: datetime, max_tasks: int = 1024) -> dict[str, Any]:
    """Gather the training window's aggregates into one object; plan the batches, of
    ``batch_size`` series or as many more as keep them at ``max_tasks`` (``max_map_length``).
    Hours of the trained day still not aggregated (the wait for them ended) are named in the
    log and in ``not_aggregated``."""
    from forewarn.aws import AwsClients
    from forewarn.train import batch_size_within, batches, gather_training, hours_not_aggregated

    clients = AwsClients.from_airflow(settings.aws_conn_id)
    pending = hours_not_aggregated(settings, clients.s3, trained_until)
    if pending:
        log.warning("training without the aggregation of %d hour(s) of the day before %s, which had not run when the wait "
                    "for it ended: %s. Those hours are unknown to the forecaster; once they are aggregated, clear this "
                    "run's gather task and its downstream tasks to learn them", len(pending), trained_until.isoformat(), ", ".join(pending))
    gathered = gather_training(settings, clients.s3, trained_until, pending)
    gathered["not_aggregated"] = pending
    series = gathered.pop("series")
    size = batch_size_within(series, settings.batch_size, settings.compare_shards, max_tasks)
    if size != settings.batch_size:
        log.warning("%d series in batches of %d would be more fit tasks than Airflow maps (max_map_length %d): batches "
                    "of %d series instead (a larger [core] max_map_length keeps batch_size)", len(series),
                    settings.batch_size, max_tasks, size)
    gathered["batch_size"] = size
    gathered["batches"] = list(range(len(batches(series, size, settings.compare_shards))))
    return gathered


def train_batch(settings: Settings, trained_until: datetime, training_uri: str, batch_no: int,
                batch_size: int | None = None) -> dict[str, Any]:
    """Fit one batch; ``batch_size``: the one ``train_gather`` planned (default the setting)."""
    from forewarn.aws import AwsClients
    from forewarn.train import batches, fit_batch, read_parquet_uri

    clients = AwsClients.from_airflow(settings.aws_conn_id)
    training = read_parquet_uri(clients.s3, training_uri)
    names = batches(sorted(training["series"].unique().tolist()), batch_size or settings.batch_size,
                    settings.compare_shards)[batch_no]
    return fit_batch(settings, clients.s3, trained_until, training, batch_no, names)


def train_publish(settings: Settings, trained_until: datetime, results: list[dict[str, Any]],
                  not_aggregated: list[str] | None = None) -> dict[str, Any]:
    from forewarn.aws import AwsClients
    from forewarn.train import write_manifest

    clients = AwsClients.from_airflow(settings.aws_conn_id)
    return write_manifest(settings, clients.s3, trained_until, results, not_aggregated)


def compact_evidence(settings: Settings, until: datetime, days: int = 3) -> list[dict[str, Any]]:
    """Compact each of the ``days`` days before ``until`` whose evidence changed since it was
    last compacted (``forewarn.evidence.compact_day``): what the page's series view reads."""
    from datetime import timedelta

    from forewarn.aws import AwsClients
    from forewarn.evidence import compact_day

    clients = AwsClients.from_airflow(settings.aws_conn_id)
    return [compact_day(clients.s3, settings.bucket, (until - timedelta(days=k)).date()) for k in range(days, 0, -1)]


def is_backfill(dag_run: Any) -> bool:
    return str(getattr(dag_run, "run_type", "")).lower().endswith("backfill")


def previous_backfill_pending(dag_run: Any, ti: Any) -> bool:
    """True while this backfill run's predecessor (the run of the interval before) is still
    queued or running: the comparison carries state from one interval to the next, so backfilled
    intervals run in order whatever the backfill's ``max_active_runs``."""
    if not is_backfill(dag_run) or ti is None:
        return False
    previous = ti.get_previous_dagrun()
    if previous is None or not is_backfill(previous):
        return False
    state = str(getattr(previous, "state", "")).lower().rsplit(".", 1)[-1]
    return state in ("queued", "running")


def aligned_interval(settings: Settings, start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """``[start, end)`` on the comparison's schedule grid (every ``compare_minutes`` from the
    hour): a scheduled run's interval as it is; a manual run's (Airflow gives it the interval
    that ends at the moment it was triggered, say 01:02:23-01:07:23) the last whole interval
    that had ended by then (01:00-01:05), so no bucket is judged before it ends."""
    from datetime import UTC

    step = settings.compare_minutes * 60

    def floor(at: datetime) -> datetime:  # Airflow hands in pendulum date-times: plain ones out
        return datetime.fromtimestamp(at.timestamp() // step * step, tz=UTC)

    if start.timestamp() % step == 0 and end.timestamp() % step == 0:
        return start, end
    aligned_start, aligned_end = floor(start), floor(end)
    if aligned_start >= aligned_end:
        aligned_start = aligned_end - timedelta(seconds=step)
    return aligned_start, aligned_end


def compare(settings: Settings, start: datetime, end: datetime, open_incidents: bool, shard: int | None = None) -> dict[str, Any]:
    """Judge one interval (of one shard's series, with ``compare_shards`` > 1); publish metrics,
    keep the dashboard in step, open/resolve incidents. An interval off the schedule's grid (a
    manual run) is judged as the last whole interval before its end (``aligned_interval``)."""
    from datetime import UTC

    from forewarn.aggregate import make_engine
    from forewarn.aws import AwsClients
    from forewarn.compare import compare_interval
    from forewarn.publish import dashboard_body, dashboard_url, make_sinks, sync_alarms, sync_dashboard

    aligned = aligned_interval(settings, start, end)
    if aligned != (start, end):
        log.info("the interval %s-%s is off the %d-minute schedule (a manual run): judging the last whole interval, %s-%s",
                 start.isoformat(), end.isoformat(), settings.compare_minutes, aligned[0].isoformat(), aligned[1].isoformat())
        start, end = aligned
    clients = AwsClients.from_airflow(settings.aws_conn_id)
    topic = clients.client("sns").create_topic(Name=settings.sns_topic)["TopicArn"] if "sns" in settings.incident_sinks else None
    sinks = make_sinks(settings.incident_sinks, clients, topic, settings.response_plan_arn or None,
                       pagerduty_conn_id=settings.pagerduty_conn_id, slack_conn_id=settings.slack_conn_id,
                       email_from=settings.email_from, email_to=settings.email_to)
    cloudwatch = clients.client("cloudwatch")
    name = settings.cloudwatch_namespace
    summary = compare_interval(
        settings, make_engine(settings, clients), clients.s3, cloudwatch, sinks, start, end,
        now=datetime.now(tz=UTC), open_incidents=open_incidents, dashboard_url=dashboard_url(clients.region, name),
        kinesis=clients.client("kinesis") if settings.actuals_source == "kinesis" else None, shard=shard,
    )
    keys = summary.pop("keys")
    if not summary["shard"]:  # one dashboard for all shards: the first keeps it in step
        body = dashboard_body(name, settings.metric_list, settings.cloudwatch_metric_list, clients.region, settings.alert_threshold,
                              default_series=min((s for s, _ in keys), default=""))
        summary["dashboard_updated"] = sync_dashboard(cloudwatch, name, body)
    if settings.alarm_action_arn:
        from forewarn.layout import shard_of

        owns = None if summary["shard"] is None else (lambda s: shard_of(s, settings.compare_shards) == summary["shard"])
        summary["alarms"] = sync_alarms(cloudwatch, name, keys, settings.alarm_action_arn, settings.alert_threshold, owns=owns)
    return summary


def label_from_params(settings: Settings, params: dict[str, Any], by: str) -> dict[str, Any]:
    """The forewarn_label DAG's task: one label from the run's params, written to ``labels/``."""
    from forewarn.aws import AwsClients
    from forewarn.labels import parse_label, write_label

    doc = {key: params.get(key) for key in ("target", "as", "from", "to", "note", "recurs")}
    label = parse_label({**doc, "by": by}, "forewarn_label params")
    key = write_label(settings, AwsClients.from_airflow(settings.aws_conn_id).s3, label)
    print(f"forewarn_label: {label.target} labelled {label.kind} by {by} -> s3://{settings.bucket}/{key}")
    return {"key": key, "target": label.target, "as": label.kind, "by": by}


def window_from_params(settings: Settings, params: dict[str, Any], by: str) -> dict[str, Any]:
    """The forewarn_maintenance DAG's task: one maintenance window from the run's params,
    written to ``maintenance/``."""
    from forewarn.aws import AwsClients
    from forewarn.maintenance import parse_window, write_window

    doc = {"series": params.get("series"), "from": params.get("from"), "to": params.get("to"),
           "rrule": params.get("rrule"), "cron": params.get("cron"), "duration_minutes": params.get("duration_minutes"),
           "tz": params.get("tz") or "UTC", "note": " ".join(x for x in (params.get("note") or "", f"(by {by})") if x).strip()}
    window = parse_window(doc, "forewarn_maintenance params")
    key = write_window(settings, AwsClients.from_airflow(settings.aws_conn_id).s3, window)
    when = (f"{window.rrule or window.cron} for {window.duration} ({window.tz})" if window.recurring
            else f"{window.start.isoformat()} to {window.end.isoformat()}")
    print(f"forewarn_maintenance: {window.series}: {when} -> s3://{settings.bucket}/{key}")
    return {"key": key, "series": window.series, "recurring": window.recurring, "by": by}


def snooze_from_params(settings: Settings, params: dict[str, Any], by: str, now: datetime) -> dict[str, Any]:
    """The forewarn_snooze DAG's task: a snooze of one series from ``now`` (the run's logical
    date: the moment it was triggered)."""
    from forewarn.aws import AwsClients
    from forewarn.maintenance import snooze_window, write_window

    window = snooze_window(params.get("target") or "", params.get("minutes"), by, params.get("note") or "", now,
                           where="forewarn_snooze params")
    key = write_window(settings, AwsClients.from_airflow(settings.aws_conn_id).s3, window)
    print(f"forewarn_snooze: {window.series} snoozed by {by} until {window.end.isoformat()} -> s3://{settings.bucket}/{key}")
    return {"key": key, "series": window.series, "until": window.end.isoformat(), "by": by}
