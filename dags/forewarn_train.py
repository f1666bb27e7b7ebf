"""
## forewarn_train

Every day at 00:30 UTC (and, with `FOREWARN_TRAIN_ON_ASSET=true`, whenever the aggregates Asset
is updated): fits a forecast for every series and metric on the last
`training_days` (default 28) of aggregates and writes the next `horizon_hours` (default 26) of
forecasts, with 80/95/99% bands, to `s3://BUCKET/forecasts/run=<day>T00/`.

**The model.** An ensemble of two sparse autoregressions fitted by least squares (statsmodels
`AutoReg`), on the series and on `log1p` of it, with lags around 1, the daily season, twice the
season and the week. Its bands are widened by a factor calibrated on six rolling origins at the
end of the history. Short histories (under four days), constant series and failed fits get the
seasonal-naive baseline, and the reason is recorded in `models-*.json` with the validation MASE
of every fit. On M4 Hourly's validation split this forecaster scores MASE 0.743 with 95% coverage
0.956 (see the README's benchmarks).

**How a run works.** `wait_for_aggregation` (a sensor, reschedule mode) waits until every hour
of the day trained on has been aggregated: `forewarn_aggregate` runs the day's last hour after
midnight, later when its data or the aggregation is late, and writes each window's summary
under `state/aggregate/` last. Hours before the first aggregated one of the training window (a
young deployment) and older gaps are not waited for; a backfill of days already aggregated does
not wait at all. After `FOREWARN_TRAIN_WAIT_MINUTES` (default 30, read when the DAG is parsed;
0: never wait) the sensor is skipped and training goes on without the hours still missing: the
`gather` log and the manifest's `not_aggregated` name them (unknown to the forecaster, not zero
events); once they are aggregated, clear `gather` and its downstream tasks to learn them.
`gather` reads the window's hourly aggregate partitions once into `training.parquet`; `fit` is
mapped over batches of `batch_size` series (workers share the load; one series never fails a
run; larger batches where there would be more than Airflow's `[core] max_map_length` maps, 1024
by default: 51,200 series at 50, and the log says so); `publish` writes `_manifest.json` last,
so a run's forecasts are complete exactly when the manifest exists. Every key derives from the
run's interval end, so a rerun or a backfill rewrites the same objects.

Beside it, `compact_evidence` regroups each of the three days before the run whose comparison
evidence changed since it was last compacted by series (`compare/days/dt=…/`), so the forewarn
page draws a series' days of history from one object a day.

**Reads:** connection `aws_default`; Variable `forewarn_config` (optional JSON overriding any
`FOREWARN_*` setting); `s3://BUCKET/aggregates/`, `s3://BUCKET/state/aggregate/`, `s3://BUCKET/compare/dt=…/`.
**Writes:** `s3://BUCKET/forecasts/run=…/`, `s3://BUCKET/compare/days/` and the Asset `s3://BUCKET/forecasts/`.
**IAM:** s3:GetObject, s3:PutObject, s3:ListBucket, s3:DeleteObject (a compacted day's parts it no longer writes).
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param, PokeReturnValue, dag, task

BUCKET = os.environ.get("FOREWARN_BUCKET", "forewarn-data")
FORECASTS = Asset(f"s3://{BUCKET}/{os.environ.get('FOREWARN_FORECASTS_PREFIX', 'forecasts/')}")
AGGREGATES = Asset(f"s3://{BUCKET}/{os.environ.get('FOREWARN_AGGREGATES_PREFIX', 'aggregates/')}")
DAILY = CronTriggerTimetable("30 0 * * *", timezone="UTC", interval=timedelta(days=1))
# FOREWARN_TRAIN_ON_ASSET=true: also start as soon as forewarn_aggregate updates the aggregates, so
# the day's forecast is ready the moment the last hour lands; later updates that day rewrite the
# same objects (the run is keyed by the day it trains until).
SCHEDULE = (
    AssetOrTimeSchedule(timetable=DAILY, assets=[AGGREGATES])
    if os.environ.get("FOREWARN_TRAIN_ON_ASSET", "false").lower() == "true"
    else DAILY
)
#: How long training waits for the aggregation of the day it trains on (its last hour is
#: aggregated after midnight, later when its data or the aggregation is late); then it trains
#: without the hours still missing and names them. Read when the DAG is parsed (the sensor's
#: timeout); 0: never wait.
WAIT_MINUTES = int(os.environ.get("FOREWARN_TRAIN_WAIT_MINUTES", "30"))


@dag(
    schedule=SCHEDULE,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["forewarn", "forecast"],
    default_args={
        "owner": "forewarn",
        "retries": 2,
        "retry_delay": timedelta(minutes=2),
        "retry_exponential_backoff": True,
        "execution_timeout": timedelta(minutes=45),
    },
    params={
        "training_days": Param(
            None, type=["null", "integer"], minimum=1, maximum=366,
            description="Days of aggregates to fit on. Empty: the configured default (28).",
        ),
        "horizon_hours": Param(
            None, type=["null", "integer"], minimum=1, maximum=168,
            description="Hours to forecast after the training day. Empty: the configured default (26).",
        ),
        "batch_size": Param(
            None, type=["null", "integer"], minimum=1,
            description="Series per mapped fit task (more where there would be more tasks than Airflow's "
                        "[core] max_map_length). Empty: the configured default (50).",
        ),
    },
)
def forewarn_train():
    # silent_fail: a poke that raises (S3 throttled, credentials expiring) counts as not done yet,
    # so the wait still ends in a skip and training goes on, rather than failing the day's run
    @task.sensor(poke_interval=60, timeout=WAIT_MINUTES * 60, mode="reschedule", soft_fail=True, silent_fail=True)
    def wait_for_aggregation(params=None, data_interval_end=None, dag_run=None) -> PokeReturnValue:
        """Wait until every hour of the day trained on has been aggregated. At the timeout the
        sensor is skipped and training goes on (``gather`` names the hours still missing)."""
        from forewarn.tasks import settings_for_run, train_pending
        from forewarn.train import day_floor

        pending = train_pending(settings_for_run(params), day_floor(data_interval_end or dag_run.run_after))
        if pending:
            print(f"forewarn_train: waiting for the aggregation of {len(pending)} hour(s): {', '.join(pending)}")
        return PokeReturnValue(is_done=not pending)

    @task(trigger_rule="none_failed")  # also after the wait timed out (skipped)
    def gather(params=None, data_interval_end=None, dag_run=None) -> dict:
        """One object with the training window's aggregates; the batch numbers to map over."""
        from forewarn.tasks import max_map_length, settings_for_run, train_gather
        from forewarn.train import day_floor

        return train_gather(settings_for_run(params), day_floor(data_interval_end or dag_run.run_after), max_map_length())

    @task(max_active_tis_per_dagrun=4)
    def fit(batch_no: int, gathered: dict, params=None, data_interval_end=None, dag_run=None) -> dict:
        from forewarn.tasks import settings_for_run, train_batch
        from forewarn.train import day_floor

        return train_batch(settings_for_run(params), day_floor(data_interval_end or dag_run.run_after), gathered["training_uri"], batch_no,
                           gathered.get("batch_size"))

    @task(outlets=[FORECASTS])
    def publish(results: list[dict], gathered: dict, params=None, data_interval_end=None, dag_run=None) -> dict:
        from forewarn.tasks import settings_for_run, train_publish
        from forewarn.train import day_floor

        manifest = train_publish(settings_for_run(params), day_floor(data_interval_end or dag_run.run_after), list(results),
                                 gathered.get("not_aggregated"))
        late = f"; not aggregated yet: {', '.join(manifest['not_aggregated'])}" if manifest["not_aggregated"] else ""
        print(f"forewarn_train: {manifest['fits']} fits {manifest['by_model']} -> {manifest['uri']}{late}")
        return {"uri": manifest["uri"], "fits": manifest["fits"], "by_model": manifest["by_model"],
                "not_aggregated": manifest["not_aggregated"]}

    @task
    def batch_numbers(gathered: dict) -> list[int]:
        return gathered["batches"]

    @task
    def compact_evidence(params=None, data_interval_end=None, dag_run=None) -> list[dict]:
        """The comparison's evidence of the last three days, by series, for the forewarn page."""
        from forewarn.tasks import compact_evidence, settings_for_run
        from forewarn.train import day_floor

        return compact_evidence(settings_for_run(params), day_floor(data_interval_end or dag_run.run_after))

    gathered = gather()
    wait_for_aggregation() >> gathered
    publish(fit.partial(gathered=gathered).expand(batch_no=batch_numbers(gathered)), gathered)
    compact_evidence()


forewarn_train()
