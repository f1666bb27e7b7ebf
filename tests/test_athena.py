"""The Athena engine through the Amazon provider's hook, against moto's Athena (which stores the
query and serves results queued through its API but runs no SQL)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import requests
import sqlglot

from forewarn.aggregate import classify_within
from forewarn.config import Settings
from forewarn.query import AthenaEngine


@pytest.mark.stack
def test_athena_engine_submits_trino_sql_on_the_glue_table_and_types_the_results(aws_stack, clients):
    from airflow.providers.amazon.aws.hooks.athena import AthenaHook

    athena = clients.client("athena")
    athena.create_work_group(
        Name="forewarn-test", Configuration={"ResultConfiguration": {"OutputLocation": "s3://forewarn-data/athena/"}}
    )
    queued = {
        "results": [
            {
                "rows": [
                    {"Data": [{"VarCharValue": "series"}, {"VarCharValue": "bucket_epoch"}, {"VarCharValue": "event_count"}]},
                    {"Data": [{"VarCharValue": "orders"}, {"VarCharValue": "1795737600"}, {"VarCharValue": "12"}]},
                ],
                "column_info": [
                    {"Name": "series", "Type": "varchar"},
                    {"Name": "bucket_epoch", "Type": "bigint"},
                    {"Name": "event_count", "Type": "bigint"},
                ],
            }
        ]
    }
    response = requests.post(f"{aws_stack['endpoint']}/moto-api/static/athena/query-results", json=queued, timeout=10)
    assert response.status_code == 201

    settings = Settings.load({"engine": "athena", "athena_workgroup": "forewarn-test"})
    engine = AthenaEngine(AthenaHook(aws_conn_id="aws_default", log_query=False), settings.glue_database,
                          settings.raw_table, workgroup=settings.athena_workgroup, poll_seconds=1)
    params = classify_within({"lookback_hours": 2, "grain_seconds": 300, "out_start_epoch": 1795737600, "out_end_epoch": 1795741200},
                             1795737600, 1795741200)
    table = engine.run("aggregate", params, datetime(2026, 11, 26, 23, tzinfo=UTC), datetime(2026, 11, 27, 1, tzinfo=UTC))
    assert table.to_pylist() == [{"series": "orders", "bucket_epoch": 1795737600, "event_count": 12}]

    executions = athena.list_query_executions(WorkGroup="forewarn-test")["QueryExecutionIds"]
    sent = athena.get_query_execution(QueryExecutionId=executions[-1])["QueryExecution"]
    assert sent["QueryExecutionContext"]["Database"] == "forewarn"
    tree = sqlglot.parse_one(sent["Query"], read="trino")
    own = {cte.alias_or_name for cte in tree.find_all(sqlglot.exp.CTE)}
    assert {(t.db, t.name) for t in tree.find_all(sqlglot.exp.Table) if t.db or t.name not in own} == {("forewarn", "raw_events")}
    assert "arrival_hour >= '2026/11/26/23'" in sent["Query"] and "APPROX_PERCENTILE" in sent["Query"].upper()
