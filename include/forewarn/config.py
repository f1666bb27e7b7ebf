"""One typed settings object for every part of forewarn.

Values come, in rising order of precedence, from the defaults below, ``FOREWARN_*`` environment
variables, the Airflow Variable ``forewarn_config`` (a JSON object, read inside tasks only) and a
manual run's params. Local and AWS deployments differ here, never in code paths.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

#: Aggregate columns a forecast can be made for.
METRICS = ("event_count", "value_sum", "value_mean", "value_stddev", "value_p95")


#: Distinct dimension keys the roll-ups may name (``sql/aggregate_rollups.sql`` has three slots).
MAX_ROLLUP_KEYS = 3


def parse_rollups(text: str) -> list[tuple[str, ...]]:
    """Dimension sets written ``region;region,channel`` (``none`` or empty: none), each once, its
    keys as written; ``ValueError`` says what is wrong."""
    from forewarn.events import DIMENSION_KEY

    sets: list[tuple[str, ...]] = []
    if text.strip().lower() == "none":
        return sets
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        keys = tuple(k.strip() for k in part.split(","))
        if any(not DIMENSION_KEY.fullmatch(k) for k in keys) or len(set(keys)) != len(keys):
            raise ValueError(f"{part!r} must be distinct dimension keys ([a-z][a-z0-9_]{{0,31}}) separated by ','")
        if tuple(sorted(keys)) not in {tuple(sorted(s)) for s in sets}:
            sets.append(keys)
    return sets


@dataclass(frozen=True)
class MetricMeaning:
    """What an aggregate column means, declared once and read by training, the detector and the
    evidence: whether a bucket with no events is a zero (counts and sums) or unknown (means,
    deviations, percentiles), and whether a shortfall is judged as Poisson counts."""

    kind: str  # "count", "sum" or "level"

    @property
    def zero_when_missing(self) -> bool:
        return self.kind in ("count", "sum")

    @property
    def poisson(self) -> bool:
        return self.kind == "count"


METRIC_MEANINGS = {"event_count": MetricMeaning("count"), "value_sum": MetricMeaning("sum"), "value_mean": MetricMeaning("level"),
                   "value_stddev": MetricMeaning("level"), "value_p95": MetricMeaning("level")}

#: The CloudWatch metrics forewarn can publish per series and metric, and the evidence column
#: each one carries.
CLOUDWATCH_METRICS = {"Actual": "actual", "Forecast": "mean", "ForecastLower": "lower_95", "ForecastUpper": "upper_95",
                      "DeviationScore": "deviation", "AnomalyLikelihood": "likelihood", "Anomalous": "anomalous"}

#: Largest magnitude an event value may have (larger ones are set aside as ``value_out_of_range``):
#: far inside CloudWatch's range (2^360, about 2.3e108) for the sums of a bucket's events too.
MAX_ABS_VALUE = 1e100

#: Grains must divide an hour, so every bucket falls in exactly one hourly partition.
VALID_GRAINS = (60, 120, 300, 600, 900, 1200, 1800, 3600)

#: ``FOREWARN_*`` variables that are not settings: read where they are used, never from the
#: ``forewarn_config`` Variable (which refuses them, saying so), with where each is read.
ENVIRONMENT_ONLY = {
    "catchup": "read when the DAG files are parsed",
    "train_on_asset": "read when the DAG files are parsed",
    "train_wait_minutes": "read when the DAG files are parsed",
    "home": "the local stack's and the CLI's working directory",
    "stack_port": "the local stack's port",
}


class ConfigError(ValueError):
    """A setting is missing or out of range; the message says which and how to fix it."""


@dataclass(frozen=True)
class Settings:
    """Deployment settings. Every field can be set as ``FOREWARN_<FIELD>`` in the environment."""

    #: Airflow connection id used for every AWS client.
    aws_conn_id: str = "aws_default"
    #: S3 bucket holding raw landings, aggregates, forecasts, errors and state.
    bucket: str = "forewarn-data"
    #: Firehose's S3 prefix; Firehose appends ``YYYY/MM/DD/HH/`` (arrival time, UTC).
    raw_prefix: str = "raw/"
    #: Aggregates, Parquet, partitioned ``dt=YYYY-MM-DD/hour=HH`` by event time.
    aggregates_prefix: str = "aggregates/"
    #: Records set aside with their reason, JSON lines, partitioned by arrival hour.
    errors_prefix: str = "errors/"
    #: Run summaries and other small state, keyed by the run's interval.
    state_prefix: str = "state/"
    #: Forecasts, one folder per training run: ``run=<trained until>/``.
    forecasts_prefix: str = "forecasts/"
    #: Kinesis data stream the producers write to.
    stream_name: str = "forewarn-events"
    #: Firehose delivery stream from the Kinesis stream to ``raw_prefix``.
    delivery_stream: str = "forewarn-landing"
    #: Glue database and tables (locations are read from the catalog).
    glue_database: str = "forewarn"
    raw_table: str = "raw_events"
    aggregates_table: str = "aggregates"
    #: SNS topic for notifications.
    sns_topic: str = "forewarn-incidents"
    #: Query engine for the aggregation SQL: ``athena`` (AWS) or ``duckdb`` (local).
    engine: str = "athena"
    #: Athena workgroup; its configured output location receives query results.
    athena_workgroup: str = "forewarn"
    #: Bucket width in seconds (must divide 3600).
    grain_seconds: int = 300
    #: Hours of event time re-aggregated by every run, so late events are picked up.
    lookback_hours: int = 2
    #: Minutes to wait after an interval ends before reading it (Firehose buffering).
    settle_minutes: int = 10
    #: Roll-ups of events' ``dimensions``: dimension sets separated by ``;``, keys in a set by
    #: ``,`` (e.g. ``region;region,channel``). Each set makes one more series per value
    #: combination, ``<series>/region=eu/channel=app`` (keys in the order they first appear
    #: here); at most 3 distinct keys. Empty: none.
    rollups: str = ""
    #: Values per roll-up key that make series of their own, admitted by volume as they first
    #: appear and then kept (the dimension catalog); any other value counts as ``__other__``.
    rollup_max_values: int = 20
    #: Minutes a roll-up child's new episode waits for its parent's while the parent is calm: if the
    #: parent's opens meanwhile, the child joins its incident; else it opens its own after them
    #: (15: ``benchmarks/demo_sweep.py``, 47/48 start times against 42/48 with 10).
    rollup_hold_minutes: int = 15
    #: Days of aggregates each training run fits on.
    training_days: int = 28
    #: Hours forecast after each training run (a day plus slack for the next run).
    horizon_hours: int = 26
    #: Aggregate columns forecast per series, comma-separated.
    metrics: str = "event_count,value_mean"
    #: Series per mapped training task.
    batch_size: int = 50
    #: Width of the comparison DAG's interval, minutes (a multiple of the grain).
    compare_minutes: int = 5
    #: Seconds Firehose buffers records before it writes them to S3 (its BufferingHints
    #: IntervalInSeconds): the landing zone is that far behind the stream.
    firehose_buffer_seconds: int = 60
    #: Minutes the comparison waits after its interval for late events before judging it; -1:
    #: the Firehose buffer plus a minute for landing sources (the stream's own minute for Kinesis).
    compare_delay_minutes: int = -1
    #: A compare run carries the state of the latest interval at or before its start: a gap of up
    #: to this many hours (failed or skipped runs) is replayed, its buckets judged late; a longer
    #: one is bridged (detectors and episodes carried, the missing buckets left unjudged).
    compare_replay_hours: int = 3
    #: Shards the comparison's series are hashed into (CRC-32 of the name): ``forewarn_compare``
    #: maps one task over each, reading only its shard's forecasts and state. Read when the DAG
    #: is parsed (the mapped task count); changing it starts every shard's detectors afresh from
    #: the training backtests (episodes are adopted from the incident registry).
    compare_shards: int = 1
    #: How far back a compare run looks for a state to carry on from (hours).
    state_search_hours: int = 48
    #: Where the comparison reads an interval's events: ``landing`` (S3, via the query engine)
    #: or ``kinesis`` (the stream, with per-shard checkpoints; aggregated with DuckDB).
    actuals_source: str = "landing"
    #: Anomaly likelihood at or above which a bucket is anomalous (one threshold for all series).
    alert_threshold: float = 0.6222
    #: Buckets back inside the 99% band that end an episode.
    resolve_after: int = 6
    #: Key (in the bucket) of the per-series settings YAML: rules by series pattern that change a
    #: series' threshold, direction, smallest deviation worth an alert and judged metrics
    #: (``forewarn.series_settings``). An absent object means no rules; empty: never read.
    series_settings_key: str = "settings/series.yaml"
    #: Where incidents go, comma-separated: sns, incident_manager, opscenter, pagerduty, slack,
    #: email (``publish.SINKS``).
    incident_sinks: str = "sns"
    #: Incident Manager response plan ARN (for the incident_manager sink).
    response_plan_arn: str = ""
    #: Airflow connection of the pagerduty sink: the Events API v2 integration's routing key in
    #: its password (``host``: another endpoint, optional).
    pagerduty_conn_id: str = "forewarn_pagerduty"
    #: Airflow connection of the slack sink: the incoming webhook's URL in its password.
    slack_conn_id: str = "forewarn_slack"
    #: The email sink's sender (an identity SES has verified) and recipients (comma-separated).
    email_from: str = ""
    email_to: str = ""
    #: CloudWatch namespace of the published metrics.
    cloudwatch_namespace: str = "forewarn"
    #: CloudWatch metrics published per series and metric, comma-separated (from Actual, Forecast,
    #: ForecastLower, ForecastUpper, DeviationScore, AnomalyLikelihood, Anomalous). The default is
    #: what the dashboards and the alarms read; every figure stays in the evidence. Each name is
    #: one custom metric per series and metric (the cost: README, DAGs).
    cloudwatch_metrics: str = "Actual,Forecast,AnomalyLikelihood"
    #: Where CloudWatch alarms on the AnomalyLikelihood metric act (a response plan or SNS topic ARN);
    #: empty: no alarms (forewarn opens incidents itself).
    alarm_action_arn: str = ""

    @property
    def rollup_sets(self) -> tuple[tuple[str, ...], ...]:
        """The declared dimension sets, each a tuple of keys in declared order."""
        try:
            sets = parse_rollups(self.rollups)
        except ValueError as err:
            raise ConfigError(f"rollups={self.rollups!r}: {err} (FOREWARN_ROLLUPS, e.g. region;region,channel).") from None
        distinct = list(dict.fromkeys(k for keys in sets for k in keys))
        if len(distinct) > MAX_ROLLUP_KEYS:
            raise ConfigError(f"rollups={self.rollups!r} names {len(distinct)} dimension keys ({', '.join(distinct)}); "
                              f"at most {MAX_ROLLUP_KEYS} (FOREWARN_ROLLUPS).")
        # a roll-up series names its keys in the order they first appear here (the query's slots)
        return tuple(tuple(sorted(keys, key=distinct.index)) for keys in sets)

    def __post_init__(self) -> None:
        if self.grain_seconds not in VALID_GRAINS:
            raise ConfigError(
                f"grain_seconds={self.grain_seconds} does not divide an hour evenly; "
                f"use one of {', '.join(map(str, VALID_GRAINS))} (FOREWARN_GRAIN_SECONDS)."
            )
        if not 1 <= self.lookback_hours <= 48:
            raise ConfigError(f"lookback_hours={self.lookback_hours} must be between 1 and 48.")
        self.rollup_sets  # noqa: B018 - validates FOREWARN_ROLLUPS
        if not 0 <= self.rollup_hold_minutes <= 120:
            raise ConfigError(f"rollup_hold_minutes={self.rollup_hold_minutes} must be between 0 and 120 (FOREWARN_ROLLUP_HOLD_MINUTES).")
        if not 1 <= self.rollup_max_values <= 1000:
            raise ConfigError(f"rollup_max_values={self.rollup_max_values} must be between 1 and 1000 (FOREWARN_ROLLUP_MAX_VALUES).")
        if self.engine not in ("athena", "duckdb"):
            raise ConfigError(f"engine={self.engine!r} must be 'athena' or 'duckdb' (FOREWARN_ENGINE).")
        if self.settle_minutes < 0:
            raise ConfigError("settle_minutes must be 0 or more.")
        if not 1 <= self.training_days <= 366 or not 1 <= self.horizon_hours <= 24 * 7 or self.batch_size < 1:
            raise ConfigError("training_days must be 1-366, horizon_hours 1-168 and batch_size at least 1.")
        if self.compare_minutes <= 0 or 60 % self.compare_minutes:
            raise ConfigError(f"compare_minutes={self.compare_minutes} must divide an hour (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30 or 60; "
                              "FOREWARN_COMPARE_MINUTES): the comparison runs every that many minutes past the hour "
                              "(`*/N`), so any other value gives intervals that overlap at the hour.")
        if self.compare_delay_minutes < -1 or self.firehose_buffer_seconds < 0:
            raise ConfigError("compare_delay_minutes must be -1 (automatic) or more, firehose_buffer_seconds 0 or more.")
        if not 1 <= self.compare_shards <= 256:
            raise ConfigError(f"compare_shards={self.compare_shards} must be between 1 and 256 (FOREWARN_COMPARE_SHARDS).")
        if self.compare_shards > 1 and self.actuals_source == "kinesis":
            raise ConfigError("compare_shards > 1 reads actuals from the landing zone only: set FOREWARN_ACTUALS_SOURCE=landing "
                              "or FOREWARN_COMPARE_SHARDS=1 (one task reading the stream).")
        if not 0 <= self.compare_replay_hours <= self.state_search_hours:
            raise ConfigError("compare_replay_hours must be between 0 and state_search_hours.")
        if self.actuals_source not in ("landing", "kinesis"):
            raise ConfigError(f"actuals_source={self.actuals_source!r} must be 'landing' or 'kinesis' (FOREWARN_ACTUALS_SOURCE).")
        if not 0 < self.alert_threshold < 1:
            raise ConfigError("alert_threshold must lie between 0 and 1.")
        unknown = set(self.metric_list) - set(METRICS)
        if unknown or not self.metric_list:
            raise ConfigError(f"metrics={self.metrics!r}: choose from {', '.join(METRICS)} (FOREWARN_METRICS).")
        unknown_cw = set(self.cloudwatch_metric_list) - set(CLOUDWATCH_METRICS)
        if unknown_cw:
            raise ConfigError(f"cloudwatch_metrics={self.cloudwatch_metrics!r}: choose from {', '.join(CLOUDWATCH_METRICS)} "
                              "(FOREWARN_CLOUDWATCH_METRICS).")
        if self.alarm_action_arn and "AnomalyLikelihood" not in self.cloudwatch_metric_list:
            raise ConfigError("alarm_action_arn is set, so the alarms need AnomalyLikelihood in cloudwatch_metrics.")
        for name in ("raw_prefix", "aggregates_prefix", "errors_prefix", "state_prefix", "forecasts_prefix"):
            value = getattr(self, name)
            if not value.endswith("/") or value.startswith("/"):
                raise ConfigError(f"{name}={value!r} must be a relative prefix ending in '/'.")

    @classmethod
    def load(cls, *overrides: Mapping[str, Any] | None, environ: Mapping[str, str] | None = None) -> Settings:
        """Defaults, then ``FOREWARN_*`` variables, then each mapping of overrides in turn."""
        env = os.environ if environ is None else environ
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for name, f in known.items():
            raw = env.get(f"FOREWARN_{name.upper()}")
            if raw is not None and raw != "":
                values[name] = _coerce(name, f.type, raw)
        for layer in overrides:
            for key, value in (layer or {}).items():
                if value is None:
                    continue
                if key in ENVIRONMENT_ONLY:
                    raise ConfigError(f"{key!r} is read only from the environment variable FOREWARN_{key.upper()} "
                                      f"({ENVIRONMENT_ONLY[key]}): remove it from the forewarn_config Variable and set the "
                                      "environment variable (on MWAA, in the startup script).")
                if key not in known:
                    raise ConfigError(f"unknown setting {key!r}; known settings: {', '.join(sorted(known))}.")
                values[key] = _coerce(key, known[key].type, value)
        return cls(**values)

    @classmethod
    def from_json(cls, text: str | None, *overrides: Mapping[str, Any] | None) -> Settings:
        """Load with the JSON object ``text`` (the ``forewarn_config`` Variable) as an override."""
        layer = json.loads(text) if text else {}
        if not isinstance(layer, dict):
            raise ConfigError("the forewarn_config Variable must hold a JSON object.")
        return cls.load(layer, *overrides)

    @property
    def metric_list(self) -> list[str]:
        return [m.strip() for m in self.metrics.split(",") if m.strip()]

    @property
    def cloudwatch_metric_list(self) -> list[str]:
        return [m.strip() for m in self.cloudwatch_metrics.split(",") if m.strip()]

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def compare_wait_minutes(self) -> int:
        """Minutes after an interval before it is read: the setting, or what the actuals source
        needs (Firehose's buffer and a minute to land; a minute for records still in flight on
        the stream)."""
        if self.compare_delay_minutes >= 0:
            return self.compare_delay_minutes
        if self.actuals_source == "kinesis":
            return 1
        return -(-self.firehose_buffer_seconds // 60) + 1

    def s3_uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


def _coerce(name: str, type_name: Any, value: Any) -> Any:
    kind = type_name if isinstance(type_name, str) else getattr(type_name, "__name__", str(type_name))
    if kind == "int":
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"setting {name} must be a whole number, got {value!r}.") from None
    if kind == "float":
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"setting {name} must be a number, got {value!r}.") from None
    return str(value)

