"""``dag.test()`` of forewarn_aggregate on the embedded stack: a real Airflow run (SQLite metadata
database) reading what the producer landed and writing the aggregates."""

from __future__ import annotations

import hashlib
import io
import json
from datetime import UTC, datetime, timedelta

import pyarrow.parquet as pq
import pytest

from forewarn import producer
from forewarn.synth import Quality, Scenario, SeriesSpec, expected_totals, plan_landing

from helpers import fresh_settings, list_keys

T0 = datetime(2026, 11, 21, tzinfo=UTC)


def load_dag():
    from airflow.dag_processing.dagbag import DagBag

    from conftest import ROOT

    bag = DagBag(dag_folder=str(ROOT / "dags" / "forewarn_aggregate.py"))
    return bag.dags["forewarn_aggregate"]


@pytest.mark.stack
@pytest.mark.airflow
def test_scheduled_and_range_runs_through_airflow(clients, airflow_db, monkeypatch):
    settings = fresh_settings(clients)
    monkeypatch.setenv("AIRFLOW_VAR_FOREWARN_CONFIG", json.dumps({"bucket": settings.bucket, "glue_database": settings.glue_database}))
    scenario = Scenario(series=[SeriesSpec("orders.count", rate=3.0), SeriesSpec("errors", rate=0.5)],
                        quality=Quality(duplicate_rate=0.03, malformed_rate=0.01, late_rate=0.05), seed=5)
    plan = plan_landing(scenario, T0.timestamp(), (T0 + timedelta(hours=5)).timestamp(), settings.lookback_hours)
    producer.write_landing(clients.s3, settings.bucket, settings.raw_prefix, plan)
    dag = load_dag()

    # A scheduled run for 04:00-05:00 rewrites 02:00-05:00; its rerun writes the same bytes.
    run = dag.test(logical_date=T0 + timedelta(hours=5))
    assert run.state == "success"
    keys = [k for k in list_keys(clients.s3, settings.bucket, settings.aggregates_prefix)]
    assert len(keys) == 3
    first = {k: hashlib.sha256(clients.s3.get_object(Bucket=settings.bucket, Key=k)["Body"].read()).digest() for k in keys}
    assert dag.test(logical_date=T0 + timedelta(hours=5)).state == "success"
    again = {k: hashlib.sha256(clients.s3.get_object(Bucket=settings.bucket, Key=k)["Body"].read()).digest() for k in keys}
    assert again == first

    # A manual range run over the whole stretch, in mapped chunks of two hours.
    conf = {"since": T0.isoformat(), "until": (T0 + timedelta(hours=5)).isoformat(), "hours_per_task": 2}
    run = dag.test(logical_date=T0 + timedelta(hours=6), run_conf=conf)
    assert run.state == "success"
    mapped = [ti for ti in run.get_task_instances() if ti.task_id == "aggregate_window"]
    assert len(mapped) == 3 and all(ti.state == "success" for ti in mapped)

    total = 0
    for key in list_keys(clients.s3, settings.bucket, settings.aggregates_prefix):
        body = clients.s3.get_object(Bucket=settings.bucket, Key=key)["Body"].read()
        total += pq.read_table(io.BytesIO(body)).column("event_count").to_numpy().sum()
    expected = expected_totals(plan, T0.timestamp(), (T0 + timedelta(hours=5)).timestamp())
    assert total == expected["events"].sum()
    report = next(ti for ti in run.get_task_instances() if ti.task_id == "report")
    assert report.state == "success"


@pytest.mark.stack
@pytest.mark.airflow
def test_a_range_run_with_more_windows_than_airflow_maps_batches_them(clients, airflow_db, monkeypatch):
    """Airflow fails the task whose list would map more than ``[core] max_map_length`` tasks
    (1024 by default: 42.7 days of one-hour windows). Here the limit is 2 and the range has five
    windows: each mapped task takes consecutive windows (three, then two), every window is
    aggregated and summarised as on its own, and the aggregates are the bytes a run of one task
    per window writes."""
    settings = fresh_settings(clients)
    monkeypatch.setenv("AIRFLOW_VAR_FOREWARN_CONFIG", json.dumps({"bucket": settings.bucket, "glue_database": settings.glue_database}))
    scenario = Scenario(series=[SeriesSpec("orders.count", rate=1.0)], quality=Quality(late_rate=0.05), seed=7)
    plan = plan_landing(scenario, T0.timestamp(), (T0 + timedelta(hours=5)).timestamp(), settings.lookback_hours)
    producer.write_landing(clients.s3, settings.bucket, settings.raw_prefix, plan)
    dag = load_dag()
    conf = {"since": T0.isoformat(), "until": (T0 + timedelta(hours=5)).isoformat(), "hours_per_task": 1}

    def aggregates() -> dict[str, bytes]:
        return {k: clients.s3.get_object(Bucket=settings.bucket, Key=k)["Body"].read()
                for k in list_keys(clients.s3, settings.bucket, settings.aggregates_prefix)}

    monkeypatch.setenv("AIRFLOW__CORE__MAX_MAP_LENGTH", "2")
    run = dag.test(logical_date=T0 + timedelta(hours=6), run_conf=conf)
    assert run.state == "success"
    assert len([ti for ti in run.get_task_instances() if ti.task_id == "aggregate_window"]) == 2
    summaries = list_keys(clients.s3, settings.bucket, f"{settings.state_prefix}aggregate/")
    assert [k.rsplit("/", 1)[1] for k in summaries] == [
        f"{T0 + timedelta(hours=h):%Y%m%dT%H}-{T0 + timedelta(hours=h + 1):%Y%m%dT%H}.json" for h in range(5)]
    batched = aggregates()
    assert len(batched) == 5

    monkeypatch.delenv("AIRFLOW__CORE__MAX_MAP_LENGTH")
    run = dag.test(logical_date=T0 + timedelta(hours=6), run_conf=conf)
    assert len([ti for ti in run.get_task_instances() if ti.task_id == "aggregate_window"]) == 5
    assert aggregates() == batched
    report = next(ti for ti in run.get_task_instances() if ti.task_id == "report")
    assert report.state == "success"
