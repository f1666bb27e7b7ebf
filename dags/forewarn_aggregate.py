"""
## forewarn_aggregate

Every hour: turns the events Firehose landed in `s3://BUCKET/raw/YYYY/MM/DD/HH/` into one row per
series × bucket (default 5 minutes) with count, sum, mean, standard deviation and p95 of the
event values, as Parquet under `s3://BUCKET/aggregates/dt=YYYY-MM-DD/hour=HH/` (event time).

**How a run works.** It waits `settle_minutes` after its interval for Firehose to flush, then
runs the aggregation SQL (Athena's Trino dialect, `forewarn/sql/`) on Athena, or on DuckDB when
`FOREWARN_ENGINE=duckdb`. Each run rewrites the last `lookback_hours` of event time as well, so
late events are counted; every partition it touches is *replaced*, so a rerun or a backfill
writes the same bytes. Each event id counts once; lines that cannot be used (invalid JSON,
missing fields, bad or out-of-range values, too late, copies of one event id that disagree) are
counted and set aside in `s3://BUCKET/errors/rejected/<arrival hour>/rejects.jsonl` with their
reason. A window that would replace an hour's aggregates by fewer events while a landing hour
that feeds it (complete, two hours after it began) holds no raw object (expired, or a wrong
`raw_prefix`) fails with an error that says so; the `force_overwrite` param replaces them anyway.
Lines set aside from a landing hour whose raw objects are gone stay where they are.

**Manual runs.** Trigger with `since` and `until` to re-aggregate a range in one run, cut into
windows of `hours_per_task` hours, one mapped task each: the quick way to build history. A range
of more windows than Airflow maps (`[core] max_map_length`, 1024 by default: 42.7 days of one-hour
windows, 2.8 years of daily ones) gives each task as few consecutive windows as keep the run
under it (a log line says so); each window is written and summarised as on its own, so the
outputs are the same bytes. A task's 30-minute timeout then covers all its windows: if tasks
time out, split the range into several runs or raise `max_map_length`.

**Reads:** connection `aws_default` (or `FOREWARN_AWS_CONN_ID`); Variable `forewarn_config`
(optional JSON overriding any `FOREWARN_*` setting); Glue tables `forewarn.raw_events`.
**Writes:** the Asset `s3://BUCKET/aggregates/`, run summaries under `state/aggregate/`.
**IAM:** athena:StartQueryExecution, athena:GetQueryExecution, athena:GetQueryResults,
glue:GetTable, s3:GetObject, s3:ListBucket, s3:PutObject, s3:DeleteObject.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import Asset, CronTriggerTimetable, Param, PokeReturnValue, dag, task

BUCKET = os.environ.get("FOREWARN_BUCKET", "forewarn-data")
AGGREGATES = Asset(f"s3://{BUCKET}/{os.environ.get('FOREWARN_AGGREGATES_PREFIX', 'aggregates/')}")


@dag(
    schedule=CronTriggerTimetable("0 * * * *", timezone="UTC", interval=timedelta(hours=1)),
    start_date=datetime(2026, 1, 1),
    catchup=os.environ.get("FOREWARN_CATCHUP", "false").lower() == "true",
    max_active_runs=3,
    doc_md=__doc__,
    tags=["forewarn", "aggregation"],
    default_args={
        "owner": "forewarn",
        "retries": 3,
        "retry_delay": timedelta(minutes=1),
        "retry_exponential_backoff": True,
        "execution_timeout": timedelta(minutes=30),
    },
    params={
        "since": Param(
            None,
            type=["null", "string"],
            format="date-time",
            description="Re-aggregate event time from here (ISO 8601, UTC). Leave empty for the run's interval.",
        ),
        "until": Param(
            None,
            type=["null", "string"],
            format="date-time",
            description="End (exclusive) of the range to re-aggregate. Give it with `since`.",
        ),
        "hours_per_task": Param(
            24, type="integer", minimum=1, maximum=168,
            description="Hours of event time per window (one query) in a range run: one mapped task a window, or a few "
                        "consecutive windows a task when the range has more windows than Airflow's [core] max_map_length.",
        ),
        "force_overwrite": Param(
            False, type="boolean",
            description="Replace an hour's aggregates by fewer events even where a landing hour that feeds it holds no "
                        "raw object (by default such a window fails: the raw data expired or the prefix is wrong).",
        ),
        "settle_minutes": Param(
            None,
            type=["null", "integer"],
            minimum=0,
            description="Minutes to wait after the interval for Firehose to flush. Empty: the configured default.",
        ),
    },
)
def forewarn_aggregate():
    @task.sensor(poke_interval=60, timeout=3600, mode="reschedule")
    def wait_for_landing(params=None, data_interval_end=None) -> PokeReturnValue:
        """Firehose buffers for up to its interval: read an hour only once it has flushed."""
        from forewarn.tasks import settings_for_run

        if params.get("since") or params.get("until"):
            return PokeReturnValue(is_done=True)
        settings = settings_for_run(params)
        settle = params.get("settle_minutes")
        settle = settings.settle_minutes if settle is None else settle
        ready_at = data_interval_end + timedelta(minutes=settle)
        return PokeReturnValue(is_done=datetime.now(tz=ready_at.tzinfo) >= ready_at)

    @task
    def plan_windows(params=None, data_interval_start=None, data_interval_end=None) -> list[list[dict]]:
        """The run's windows, in batches: one window a mapped task, unless there are more windows
        than Airflow maps (``[core] max_map_length``)."""
        from forewarn.tasks import max_map_length, plan_aggregation, settings_for_run

        settings = settings_for_run(params)
        return plan_aggregation(
            settings, data_interval_start, data_interval_end, params.get("since"), params.get("until"), params["hours_per_task"],
            max_map_length(),
        )

    @task(outlets=[AGGREGATES], max_active_tis_per_dagrun=2)
    def aggregate_window(windows: list[dict], params=None) -> list[dict]:
        from forewarn.tasks import aggregate, settings_for_run

        return aggregate(settings_for_run(params), windows, force=bool(params.get("force_overwrite")))

    @task
    def report(summaries: list[list[dict]]) -> dict:
        from forewarn.tasks import combine

        totals = combine([summary for batch in summaries for summary in batch])
        print(f"forewarn_aggregate: {totals}")
        return totals

    batches = plan_windows()
    wait_for_landing() >> batches
    report(aggregate_window.expand(windows=batches))


forewarn_aggregate()
