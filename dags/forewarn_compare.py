"""
## forewarn_compare

Every 5 minutes: aggregates the interval's landed events with the aggregation SQL, judges every
series and metric against the forecast of `forewarn_train`, publishes CloudWatch metrics and
opens an incident when a series leaves what the forecast expected.

**How a run works.** `wait_for_late_data` waits after the interval until its events have
landed: `compare_delay_minutes`, or by default (-1) Firehose's buffering
(`firehose_buffer_seconds`) plus a minute. `compare` reads the interval's actuals from the S3
landing zone (Athena, or DuckDB locally) or the stream, each bucket's forecast from the newest
training run that covers it, and the detector state of the latest interval at or before its
start: a gap after skipped or failed runs is replayed (up to `compare_replay_hours`) or bridged,
never a reset of open episodes (the first time, detectors warm on the training backtests). A
manual run ("Trigger") judges the last whole interval that had ended when it was triggered
(Airflow gives it the interval ending at that moment): no bucket is judged before it ends. Each bucket gets a
standardised deviation and an anomaly likelihood in [0, 1]; at `alert_threshold` it is
anomalous. A series' first anomalous bucket opens an episode and one incident (Incident
Manager with a deterministic clientToken, SNS, OpsCenter: `incident_sinks`); six calm buckets
end it. Metrics per series and metric: `cloudwatch_metrics` (by default Actual, Forecast,
AnomalyLikelihood; every figure is in the evidence), batched to the PutMetricData limits; the
dashboard ranks the most anomalous series (Metrics Insights) and shows one series, typed into
its `Series` field, against its forecast.

**Shards.** With `compare_shards` (`FOREWARN_COMPARE_SHARDS`, read when the DAG is parsed) above
1, `compare` is mapped over the shards: series are hashed into them (CRC-32 of the name), and
each mapped task reads only its shard's forecasts (training writes its batches within shards)
and its own state chain (`state/compare/shard=NNN/`), and writes its own evidence.

**Reruns and backfills** read the state of the interval's start and write the state of its
end, so they reach the same verdicts, and the incident registry (`incidents/`) means an episode
is opened once; each run reconciles its episodes with the registry. Backfill runs keep their
own state chain (`state/compare-backfill/`), so they never change what live runs read; each
backfilled interval waits for the one before it (whatever the backfill's `max_active_runs`); they
publish metrics (within CloudWatch's 14 days, the rest counted) but open no incident unless
`open_incidents_for_past` is set.

**No blind spot.** Where no training run covers a bucket, the run says so: the
`BucketsJudgedRatio`, `BlindSeries`, `ForecastAgeHours` and `DataFreshnessMinutes` metrics
(dimension `Pipeline=forewarn`) and one incident of its own, "forewarn is blind for N series",
opened and resolved like any episode (with no training run covering the interval at all, every
series with events counts). `UnforecastSeries` counts series with events that no forecast
covers yet (a new one, until a training run takes it up); it opens no incident.

**Reads:** connection `aws_default` (and `forewarn_pagerduty` / `forewarn_slack` when those sinks are listed in
`FOREWARN_INCIDENT_SINKS`: the routing key or webhook URL in the password); Variable `forewarn_config`;
landing zone, forecasts, state.
**Writes:** `compare/`, `state/compare/`, `state/compare-backfill/`, `incidents/` in S3; CloudWatch metrics and dashboard.
**IAM:** athena:StartQueryExecution, athena:GetQueryExecution, athena:GetQueryResults,
glue:GetTable, s3:GetObject, s3:PutObject, s3:ListBucket, cloudwatch:PutMetricData,
cloudwatch:GetDashboard, cloudwatch:PutDashboard, cloudwatch:DescribeAlarms, cloudwatch:PutMetricAlarm,
cloudwatch:DeleteAlarms, sns:CreateTopic, sns:Publish,
s3:DeleteObject (an incident's open marker, once resolved), ssm-incidents:StartIncident,
ssm-incidents:UpdateIncidentRecord, ssm-incidents:CreateTimelineEvent, ssm:CreateOpsItem, ssm:UpdateOpsItem,
ses:SendEmail (the email sink); kinesis:ListShards, kinesis:GetShardIterator, kinesis:GetRecords with
`FOREWARN_ACTUALS_SOURCE=kinesis`.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import CronTriggerTimetable, Param, PokeReturnValue, dag, task

MINUTES = int(os.environ.get("FOREWARN_COMPARE_MINUTES", "5"))
#: With more than one shard, `compare` is mapped over them (read when the DAG is parsed: a task count).
SHARDS = int(os.environ.get("FOREWARN_COMPARE_SHARDS", "1"))


@dag(
    schedule=CronTriggerTimetable(f"*/{MINUTES} * * * *", timezone="UTC", interval=timedelta(minutes=MINUTES)),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["forewarn", "detection"],
    default_args={
        "owner": "forewarn",
        "retries": 3,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": True,
        "execution_timeout": timedelta(minutes=4),
    },
    params={
        "open_incidents_for_past": Param(
            False, type="boolean",
            description="Open incidents in backfill runs too (by default a backfill only records episodes and metrics).",
        ),
        "delay_minutes": Param(
            None, type=["null", "integer"], minimum=0,
            description="Minutes to wait after the interval for late events. Empty: the configured wait (Firehose's buffer and a minute).",
        ),
    },
)
def forewarn_compare():
    @task.sensor(poke_interval=30, timeout=3600, mode="reschedule")
    def wait_for_late_data(params=None, data_interval_end=None, dag_run=None, ti=None) -> PokeReturnValue:
        """Wait for the interval's events to land; in a backfill, also for the interval before
        to finish (a backfill runs up to its own max_active_runs at once, and each interval
        carries on from the state the one before writes)."""
        from forewarn.tasks import previous_backfill_pending, settings_for_run

        if previous_backfill_pending(dag_run, ti):
            return PokeReturnValue(is_done=False)
        delay = params.get("delay_minutes")
        delay = settings_for_run(params).compare_wait_minutes if delay is None else delay
        ready_at = data_interval_end + timedelta(minutes=delay)
        return PokeReturnValue(is_done=datetime.now(tz=ready_at.tzinfo) >= ready_at)

    @task
    def compare(shard=None, params=None, data_interval_start=None, data_interval_end=None, dag_run=None) -> dict:
        from forewarn.tasks import compare as run_compare
        from forewarn.tasks import is_backfill, settings_for_run

        settings = settings_for_run(params)
        if settings.compare_shards != SHARDS:
            from forewarn.config import ConfigError

            raise ConfigError(f"compare_shards is {settings.compare_shards} in the settings but the DAG was parsed with {SHARDS}: "
                              "set FOREWARN_COMPARE_SHARDS in the environment of every Airflow component, not in a Variable")
        if settings.compare_minutes != MINUTES:
            from forewarn.config import ConfigError

            raise ConfigError(f"compare_minutes is {settings.compare_minutes} in the settings but the DAG was parsed with "
                              f"{MINUTES} (its schedule): set FOREWARN_COMPARE_MINUTES in the environment of every Airflow "
                              "component, not in a Variable")
        open_incidents = params["open_incidents_for_past"] or not is_backfill(dag_run)
        summary = run_compare(settings, data_interval_start, data_interval_end, open_incidents, shard=shard)
        print(f"forewarn_compare: {summary}")
        return summary

    if SHARDS > 1:
        wait_for_late_data() >> compare.expand(shard=list(range(SHARDS)))
    else:
        wait_for_late_data() >> compare()


forewarn_compare()
