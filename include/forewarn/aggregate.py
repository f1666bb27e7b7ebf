"""Aggregation of landed events into one row per series x bucket, keyed by event-time hour.

Which raw hours a run reads and which aggregate hours it rewrites follow from the interval alone:

* A scheduled run for ``[t0, t1)`` rewrites event hours ``[t0 - L, t1)`` (``L`` = look-back) and
  reads the landing hours ``[t0 - L - 1h, t1 + L)``.
* A range run (manual, ``since``/``until``) rewrites ``[since, until)`` in chunks, each reading
  ``[c0 - 1h, c1 + L)``.

An event is accepted when it lands no more than ``L`` hours after its event hour and no more than
an hour before it (``classified_events.sql``), so every hour's final content is one definite set,
and every run that rewrites an hour reads every landing hour that set can come from. Live, the
landing hours after "now" do not exist yet and an hour is rewritten, more complete, by the next
runs; once everything has landed, any run over the hour — a rerun, a backfill running its
intervals in any order or in parallel, a range run — writes the same bytes.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from forewarn.config import Settings
from forewarn.layout import (
    aggregate_key,
    aggregate_summary_key,
    aggregate_summary_prefix,
    hour_key,
    is_rollup,
    parsed_prefix,
    raw_hour_prefix,
    rejects_key,
)
from forewarn.query import Engine, aggregate_query, hour_range

log = logging.getLogger(__name__)
HOUR = timedelta(hours=1)

AGGREGATE_SCHEMA = pa.schema(
    [
        pa.field("series", pa.string(), nullable=False),
        pa.field("bucket_start", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("grain_seconds", pa.int32(), nullable=False),
        pa.field("event_count", pa.int64(), nullable=False),
        pa.field("value_sum", pa.float64()),
        pa.field("value_mean", pa.float64()),
        pa.field("value_stddev", pa.float64()),
        pa.field("value_p95", pa.float64()),
    ]
)


@dataclass(frozen=True)
class Window:
    """Event hours ``[out_start, out_end)`` to rewrite from landing hours ``[arrival_start, arrival_end)``."""

    out_start: datetime
    out_end: datetime
    arrival_start: datetime
    arrival_end: datetime

    def to_dict(self) -> dict[str, str]:
        return {k: v.isoformat() for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, doc: dict[str, str]) -> Window:
        return cls(**{k: _utc(datetime.fromisoformat(v)) for k, v in doc.items()})

    @property
    def key(self) -> str:
        return f"{self.out_start:%Y%m%dT%H}-{self.out_end:%Y%m%dT%H}"


def floor_hour(moment: datetime) -> datetime:
    return _utc(moment).replace(minute=0, second=0, microsecond=0)


def ceil_hour(moment: datetime) -> datetime:
    floored = floor_hour(moment)
    return floored if floored == _utc(moment) else floored + HOUR


def scheduled_window(start: datetime, end: datetime, lookback_hours: int) -> Window:
    out_start = floor_hour(start) - lookback_hours * HOUR
    out_end = ceil_hour(end)
    return Window(out_start, out_end, out_start - HOUR, out_end + lookback_hours * HOUR)


def range_windows(since: datetime, until: datetime, lookback_hours: int, hours_per_task: int) -> list[Window]:
    """Chunks of at most ``hours_per_task`` event hours covering ``[since, until)``."""
    if hours_per_task < 1:
        raise ValueError("hours_per_task must be at least 1")
    start, end = floor_hour(since), ceil_hour(until)
    if end <= start:
        raise ValueError(f"until ({until.isoformat()}) must be after since ({since.isoformat()})")
    windows = []
    c0 = start
    while c0 < end:
        c1 = min(c0 + hours_per_task * HOUR, end)
        windows.append(Window(c0, c1, c0 - HOUR, c1 + lookback_hours * HOUR))
        c0 = c1
    return windows


def batch_windows(windows: list[Window], max_batches: int) -> list[list[Window]]:
    """Consecutive windows in at most ``max_batches`` batches of one size (the last may be
    smaller): one window a batch while they fit, else as few a batch as keep under the limit."""
    if max_batches < 1:
        raise ValueError("max_batches must be at least 1")
    size = max(1, -(-len(windows) // max_batches))
    return [windows[i : i + size] for i in range(0, len(windows), size)]


def summary_key(settings: Settings, window: Window) -> str:
    return aggregate_summary_key(settings, window.key)


#: The longest window a run makes (``hours_per_task`` goes up to 168 hours; a scheduled window
#: is ``lookback_hours`` + 1 ≤ 49): summaries are looked up from this far before an hour.
LONGEST_WINDOW = 168 * HOUR


def _summary_span(name: str) -> tuple[datetime, datetime] | None:
    """The event hours ``[out_start, out_end)`` a summary's name (``Window.key``) says it covers."""
    try:
        first, last = name.removesuffix(".json").split("-")
        return (datetime.strptime(first, "%Y%m%dT%H").replace(tzinfo=UTC),
                datetime.strptime(last, "%Y%m%dT%H").replace(tzinfo=UTC))
    except ValueError:
        return None


def aggregated_hours(settings: Settings, s3: Any, start: datetime, end: datetime) -> set[datetime]:
    """The hours of ``[start, end)`` whose aggregation has run: a window that covers them wrote
    its summary (the last thing ``run_window`` writes) after the hour had ended. A range run
    reaching past the hour it ran in has not aggregated the hours after it. One listing of the
    summaries, found by their window's start, from ``LONGEST_WINDOW`` before ``start``."""
    prefix = aggregate_summary_prefix(settings)
    start, done = floor_hour(start), set()
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=settings.bucket, Prefix=prefix, StartAfter=f"{prefix}{start - LONGEST_WINDOW:%Y%m%dT%H}")
    for page in pages:
        for obj in page.get("Contents", []):
            span = _summary_span(obj["Key"][len(prefix):])
            if span is None:
                continue
            if span[0] >= end:  # keys sort by the window's start
                return done
            done.update(h for h in hour_range(max(span[0], start), min(span[1], end)) if h + HOUR <= obj["LastModified"])
    return done


class RefusedOverwrite(RuntimeError):
    """A window would replace aggregates that hold rows with empty ones although no raw data
    is left that could have produced them."""


def _has_raw(settings: Settings, s3: Any, start: datetime, end: datetime) -> bool:
    return any(s3.list_objects_v2(Bucket=settings.bucket, Prefix=raw_hour_prefix(settings, hour), MaxKeys=1).get("KeyCount", 0)
               for hour in hour_range(start, end))


def _events_in(s3: Any, bucket: str, key: str) -> int:
    """Events an aggregate partition counts over its own series (roll-up rows, whose names
    hold ``key=value``, count the same events again), 0 when there is none."""
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return 0
    table = pq.read_table(io.BytesIO(body), columns=["series", "event_count"])
    own = [n for name, n in zip(table.column("series").to_pylist(), table.column("event_count").to_pylist(), strict=True)
           if not is_rollup(name)]
    return int(sum(n or 0 for n in own))


#: A landing hour is complete (Firehose has delivered it) this long after it began.
LANDED_AFTER = 2 * HOUR


def check_not_emptying(settings: Settings, s3: Any, rows: pa.Table, window: Window, now: datetime | None = None) -> None:
    """Refuse to replace an hour's aggregates by fewer events when a landing hour that feeds it,
    complete by ``now``, holds no raw object (expired by a lifecycle rule, or a wrong
    ``raw_prefix``): the events missing now were landed and would be lost silently. At the
    retention edge an hour's own landing folder can be gone while the next one, holding its late
    events, is still there, so an hour that still gets some rows is checked too. With every
    feeding landing hour present (or not complete yet) nothing is read (one listing per landing
    hour); counts are of the events themselves, not of their roll-ups."""
    now = now or datetime.now(UTC)
    new_events: dict[datetime, int] = {}
    if rows.num_rows:
        for name, epoch, n in zip(rows.column("series").to_pylist(), rows.column("bucket_epoch").to_pylist(),
                                  rows.column("event_count").to_pylist(), strict=True):
            if not is_rollup(name):
                hour = datetime.fromtimestamp(epoch - epoch % 3600, tz=UTC)
                new_events[hour] = new_events.get(hour, 0) + int(n or 0)
    present: dict[datetime, bool] = {}

    def landed(hour: datetime) -> bool:
        if hour not in present:
            present[hour] = hour + LANDED_AFTER > now or _has_raw(settings, s3, hour, hour + HOUR)
        return present[hour]

    lost = []
    for hour in hour_range(window.out_start, window.out_end):
        feeding = hour_range(max(hour - HOUR, window.arrival_start), min(hour + HOUR * (settings.lookback_hours + 1), window.arrival_end))
        gone = [h for h in feeding if not landed(h)]
        if not gone:
            continue  # the landing zone is all there: what the run counts is what landed
        old, counted = _events_in(s3, settings.bucket, aggregate_key(settings, hour)), new_events.get(hour, 0)
        if counted < old:
            lost.append(f"{hour:%Y-%m-%dT%H} ({old} events, {counted} now)")
    if lost:
        raise RefusedOverwrite(
            f"not replacing the aggregates of {len(lost)} hour(s) by fewer events: landing hours that feed them hold no "
            f"raw object under s3://{settings.bucket}/{settings.raw_prefix} (expired, or FOREWARN_RAW_PREFIX is wrong): "
            f"{', '.join(lost[:10])}{' ...' if len(lost) > 10 else ''}. Check the landing zone; to replace them anyway, "
            "run again with force_overwrite (the forewarn_aggregate param)."
        )


#: Event times beyond any a line can carry: ``classify_within`` with no range ranks every copy.
_ALL_TIME = 2**62


def classify_within(params: dict[str, Any], start_epoch: int = -_ALL_TIME, end_epoch: int = _ALL_TIME) -> dict[str, Any]:
    """``params`` with the range whose event ids ``classified_events.sql`` de-duplicates: the
    window a query counts (``aggregate``, ``event_counts``), or all time (``rejects``, which lists
    every conflicting copy read)."""
    return {**params, "classify_start_epoch": int(start_epoch), "classify_end_epoch": int(end_epoch)}


def rollup_plan_of(settings: Settings, s3: Any) -> Any:
    """The roll-ups of every series: ``FOREWARN_ROLLUPS`` and the per-series settings'
    ``rollups``. Settings that cannot be used are logged and ``FOREWARN_ROLLUPS`` alone applies
    (the comparison fails on them and says why)."""
    from forewarn.dimensions import rollup_plan
    from forewarn.series_settings import SeriesSettingsError, read_series_settings

    try:
        return rollup_plan(settings, read_series_settings(settings, s3))
    except SeriesSettingsError as err:
        log.warning("per-series settings not used for the roll-ups: %s", err)
        return rollup_plan(settings)


def run_window(settings: Settings, engine: Engine, s3: Any, window: Window, force: bool = False,
               now: datetime | None = None) -> dict[str, Any]:
    """Aggregate one window and replace its outputs; returns the run summary (also written to S3).
    Raises ``RefusedOverwrite`` where it would empty hours whose raw data is gone, unless
    ``force``."""
    params = {
        "lookback_hours": settings.lookback_hours,
        "grain_seconds": settings.grain_seconds,
        "out_start_epoch": int(window.out_start.timestamp()),
        "out_end_epoch": int(window.out_end.timestamp()),
    }
    counted = classify_within(params, params["out_start_epoch"], params["out_end_epoch"])
    catalog, admitted = None, []
    plan = rollup_plan_of(settings, s3)
    if plan.sets:  # the values kept per dimension key, admitted by this window if it is the newest
        from forewarn.dimensions import refresh_catalog

        catalog, admitted = refresh_catalog(settings, engine, s3, counted, params["out_start_epoch"], params["out_end_epoch"],
                                            (window.arrival_start, window.arrival_end), plan.keys)
    query, extra = aggregate_query(settings, catalog, plan)
    rows = engine.run(query, {**counted, **extra}, window.arrival_start, window.arrival_end)
    counts = engine.run("event_counts", counted, window.arrival_start, window.arrival_end)
    rejects = engine.run("rejects", classify_within(params), window.arrival_start, window.arrival_end)
    if not force:
        check_not_emptying(settings, s3, rows, window, now)

    written = write_aggregates(settings, s3, rows, window)
    reject_counts = write_rejects(settings, s3, rejects, window)

    copies = dict(zip(counts.column("series").to_pylist(), counts.column("copies").to_pylist(), strict=True))
    distinct = dict(zip(counts.column("series").to_pylist(), counts.column("events").to_pylist(), strict=True))
    summary = {
        "window": window.to_dict(),
        "grain_seconds": settings.grain_seconds,
        "lookback_hours": settings.lookback_hours,
        "rows": rows.num_rows,
        "series": len(distinct),
        # the roll-ups' series (FOREWARN_ROLLUPS): one per value combination of each dimension set
        "rollup_series": len(set(rows.column("series").to_pylist()) - set(distinct)) if plan.sets else 0,
        # per roll-up key, the values with series of their own (the others are __other__), and those admitted now
        "rollup_values": {k: len(v) for k, v in sorted(catalog.values.items())} if catalog else {},
        "rollup_values_admitted": [f"{k}={v}" for k, v in admitted],
        "events": int(sum(distinct.values())),
        "duplicates": int(sum(copies.values()) - sum(distinct.values())),
        "events_by_series": {k: int(v) for k, v in sorted(distinct.items())},
        "duplicates_by_series": {k: int(copies[k] - distinct[k]) for k in sorted(distinct) if copies[k] > distinct[k]},
        "rejected": sum(sum(c.values()) for c in reject_counts.values()),
        "rejected_by_reason": by_reason(reject_counts),
        "rejected_by_hour": reject_counts,
        "objects": written,
    }
    s3.put_object(
        Bucket=settings.bucket,
        Key=summary_key(settings, window),
        Body=json.dumps(summary, indent=2, sort_keys=True).encode(),
        ContentType="application/json",
    )
    log.info(
        "aggregated %s: %d rows, %d events, %d duplicates, %d rejected %s",
        window.key,
        summary["rows"],
        summary["events"],
        summary["duplicates"],
        summary["rejected"],
        summary["rejected_by_reason"],
    )
    return summary


def to_aggregate_table(rows: pa.Table, grain_seconds: int) -> pa.Table:
    """Engine result -> the published Parquet schema, sorted by series and bucket."""
    n = rows.num_rows
    epoch = rows.column("bucket_epoch").cast(pa.int64()) if n else pa.array([], pa.int64())
    table = pa.table(
        {
            "series": rows.column("series").cast(pa.string()) if n else pa.array([], pa.string()),
            "bucket_start": pc.multiply(epoch, 1000).cast(pa.timestamp("ms", tz="UTC")),
            "grain_seconds": pa.array([grain_seconds] * n, pa.int32()),
            "event_count": rows.column("event_count").cast(pa.int64()) if n else pa.array([], pa.int64()),
            **{
                c: (rows.column(c).cast(pa.float64()) if n else pa.array([], pa.float64()))
                for c in ("value_sum", "value_mean", "value_stddev", "value_p95")
            },
        },
        schema=AGGREGATE_SCHEMA,
    )
    return table.sort_by([("series", "ascending"), ("bucket_start", "ascending")])


def parquet_bytes(table: pa.Table, row_group_size: int | None = None) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd", write_statistics=True, row_group_size=row_group_size)
    return buffer.getvalue()


def write_aggregates(settings: Settings, s3: Any, rows: pa.Table, window: Window) -> list[str]:
    """Replace every hourly partition of the window (an hour with no events gets an empty file)."""
    table = to_aggregate_table(rows, settings.grain_seconds)
    hours = pc.floor_temporal(table.column("bucket_start"), unit="hour") if table.num_rows else None
    keys = []
    for hour in hour_range(window.out_start, window.out_end):
        if hours is not None:
            mask = pc.equal(hours, pa.scalar(hour, pa.timestamp("ms", tz="UTC")))
            part = table.filter(mask)
        else:
            part = table
        key = aggregate_key(settings, hour)
        s3.put_object(Bucket=settings.bucket, Key=key, Body=parquet_bytes(part))
        keys.append(key)
    return keys


def write_rejects(settings: Settings, s3: Any, rejects: pa.Table, window: Window) -> dict[str, dict[str, int]]:
    """Set rejected lines aside per landing hour with their reason; an hour read with none loses
    any stale file (one whose raw objects are gone keeps what was set aside from it). Returns
    counts by landing hour and reason."""
    by_hour: dict[str, list[str]] = {}
    counts: dict[str, dict[str, int]] = {}
    for arrival, reason, source, line in zip(
        *(rejects.column(c).to_pylist() for c in ("arrival_hour", "reason", "source_key", "line")), strict=True
    ):
        hour_counts = counts.setdefault(arrival, {})
        hour_counts[reason] = hour_counts.get(reason, 0) + 1
        record = json.dumps({"reason": reason, "source": source, "line": line}, ensure_ascii=False, sort_keys=True)
        by_hour.setdefault(arrival, []).append(record)
    for hour in hour_range(window.arrival_start, window.arrival_end):
        key = rejects_key(settings, hour)
        lines = by_hour.get(hour_key(hour))
        if lines:
            s3.put_object(Bucket=settings.bucket, Key=key, Body=("\n".join(lines) + "\n").encode())
        elif _has_raw(settings, s3, hour, hour + HOUR):  # read, and nothing in it was rejected
            s3.delete_object(Bucket=settings.bucket, Key=key)
        # else: the landing hour is gone (expired): what was set aside from it stays
    return {h: dict(sorted(c.items())) for h, c in sorted(counts.items())}


def by_reason(by_hour: dict[str, dict[str, int]]) -> dict[str, int]:
    """Reject counts by reason over landing hours (windows overlap: merge by hour first)."""
    total: dict[str, int] = {}
    for reasons in by_hour.values():
        for reason, n in reasons.items():
            total[reason] = total.get(reason, 0) + n
    return dict(sorted(total.items()))


def make_engine(settings: Settings, clients: Any, athena_hook: Any = None) -> Engine:
    """The engine the settings name: DuckDB over the Glue table's S3 location, or Athena."""
    from forewarn.aws import glue_location
    from forewarn.query import AthenaEngine, DuckDBEngine

    if settings.engine == "duckdb":
        location = glue_location(clients.client("glue"), settings.glue_database, settings.raw_table)
        return DuckDBEngine(clients.filesystem(), location, settings.s3_uri(parsed_prefix(settings)), shards=settings.compare_shards)
    if athena_hook is None:
        from airflow.providers.amazon.aws.hooks.athena import AthenaHook

        from forewarn.aws import RETRY_CONFIG

        athena_hook = AthenaHook(aws_conn_id=settings.aws_conn_id, log_query=False, config=RETRY_CONFIG)
    return AthenaEngine(athena_hook, settings.glue_database, settings.raw_table, workgroup=settings.athena_workgroup)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
