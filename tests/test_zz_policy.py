"""The MWAA execution role in infra/forewarn.yaml allows every AWS action the DAGs' code made
during this test run, and nothing more. (Runs last: it reads what the other tests recorded.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import AWS_CALLS, ROOT

TEMPLATE = ROOT / "infra" / "forewarn.yaml"
#: IAM action for an S3 API operation where the names differ.
S3_ACTIONS = {"ListObjectsV2": "s3:ListBucket", "ListObjects": "s3:ListBucket", "HeadObject": "s3:GetObject"}
PREFIX = {"monitoring": "cloudwatch", "cloudwatch": "cloudwatch", "ssm-incidents": "ssm-incidents"}
#: Actions no forewarn call names but that its calls need, each with why.
IMPLIED = {
    "glue:GetDatabase": "Athena resolves the database with the caller's credentials",
    "glue:GetPartitions": "Athena reads the tables' partition metadata with the caller's credentials",
    "s3:GetBucketLocation": "Athena checks the result location with the caller's credentials",
    "s3:ListBucket": "Athena lists the table data; and without it S3 answers AccessDenied instead of "
    "NoSuchKey for a missing object, which the code tells apart (no state yet, no forecast run yet)",
}


class Loader(yaml.SafeLoader):
    pass


def _tag(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    return loader.construct_mapping(node)


Loader.add_multi_constructor("!", _tag)


def policy_actions() -> set[str]:
    doc = yaml.load(TEMPLATE.read_text(), Loader=Loader)  # noqa: S506 - SafeLoader subclass with CFN tags
    role = doc["Resources"]["MwaaExecutionRole"]["Properties"]
    (policy,) = [p for p in role["Policies"] if p["PolicyName"] == "forewarn-dags"]
    actions = set()
    for statement in policy["PolicyDocument"]["Statement"]:
        assert statement["Effect"] == "Allow"
        acts = statement["Action"]
        actions.update([acts] if isinstance(acts, str) else acts)
    return actions


def iam_action(service: str, operation: str) -> str:
    if service == "s3":
        return S3_ACTIONS.get(operation, f"s3:{operation}")
    return f"{PREFIX.get(service, service)}:{operation}"


def test_template_passes_cfn_lint():
    out = subprocess.run([str(Path(sys.executable).with_name("cfn-lint")), str(TEMPLATE)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_policy_allows_exactly_what_the_code_calls():
    if len(AWS_CALLS) < 10:
        pytest.skip("run with the whole suite: this test checks the AWS calls the other tests recorded")
    called = {iam_action(s, o) for s, o in AWS_CALLS}
    allowed = policy_actions()
    assert called - allowed == set(), f"the code calls actions the MWAA role does not allow: {sorted(called - allowed)}"
    unused = allowed - called - set(IMPLIED)
    assert unused == set(), f"the MWAA role allows actions no code path calls: {sorted(unused)}"


def test_glue_tables_match_the_catalog_module():
    from forewarn.catalog import aggregates_table_input, raw_table_input
    from forewarn.config import Settings

    doc = yaml.load(TEMPLATE.read_text(), Loader=Loader)  # noqa: S506
    settings = Settings.load({"bucket": "B"}, environ={})
    for resource, expected in (("RawEventsTable", raw_table_input(settings)), ("AggregatesTable", aggregates_table_input(settings))):
        table = doc["Resources"][resource]["Properties"]["TableInput"]
        assert table["Name"] == expected["Name"]
        assert table["PartitionKeys"] == expected["PartitionKeys"]
        assert table["StorageDescriptor"]["Columns"] == expected["StorageDescriptor"]["Columns"]
        assert table["StorageDescriptor"]["SerdeInfo"] == expected["StorageDescriptor"]["SerdeInfo"]
        params = {k: v for k, v in table["Parameters"].items() if k != "storage.location.template"}
        assert params == {k: v for k, v in expected["Parameters"].items() if k != "storage.location.template"}


def test_overview_dashboard_searches_the_metrics_the_comparison_publishes():
    import json
    import re

    import pandas as pd

    from forewarn.compare import metric_data

    doc = yaml.load(TEMPLATE.read_text(), Loader=Loader)  # noqa: S506 - SafeLoader subclass with CFN tags
    body_template, variables = doc["Resources"]["OverviewDashboard"]["Properties"]["DashboardBody"]
    body = json.loads(body_template.replace("${NS}", "forewarn").replace("${AWS::Region}", "us-east-1"))
    graphs = [w["properties"]["metrics"] for w in body["widgets"] if w["type"] == "metric"]
    queried = {re.search(r"MAX\((\w+)\)", m[0][0]["expression"]).group(1) for m in graphs if isinstance(m[0][0], dict)}
    listed = {line[1] for m in graphs for line in m if isinstance(line[0], str)}

    row = pd.DataFrame([{"series": "s", "metric": "event_count", "bucket_start": pd.Timestamp("2026-11-27", tz="UTC"), "actual": 1.0,
                         "mean": 1.0, "lower_95": 0.0, "upper_95": 2.0, "deviation": 0.0, "likelihood": 0.1, "anomalous": 0}])
    from datetime import UTC, datetime

    from forewarn.compare import health_metric_data
    from forewarn.config import Settings as _Settings

    published = {d["MetricName"] for d in metric_data(row, _Settings().cloudwatch_metric_list)}
    health = {"judged_ratio": 1.0, "blind_series": 0, "data_freshness_minutes": 1.0, "forecast_age_hours": 2.0, "unforecast_series": 0}
    pipeline = {d["MetricName"] for d in health_metric_data(health, datetime(2026, 11, 27, tzinfo=UTC))}
    assert queried == {"AnomalyLikelihood"} and queried <= published and listed == pipeline
    # the whole namespace, so roll-up series (whose metrics carry one more dimension per key) rank too
    assert all('FROM "forewarn" ' in m[0][0]["expression"] and "SCHEMA" not in m[0][0]["expression"]
               for m in graphs if isinstance(m[0][0], dict))
    assert {d["Name"] for d in metric_data(row)[0]["Dimensions"]} == {"Series", "Metric"}
    child = row.assign(series="s/region=eu/channel=app")
    assert [(d["Name"], d["Value"]) for d in metric_data(child)[0]["Dimensions"]] == [
        ("Series", "s/region=eu/channel=app"), ("Metric", "event_count"), ("region", "eu"), ("channel", "app")]
    assert variables == {"NS": "CloudWatchNamespace"}
    from forewarn.config import Settings

    marks = [a["value"] for w in body["widgets"] if w["type"] == "metric"
             for a in w["properties"].get("annotations", {}).get("horizontal", [])]
    assert marks == [Settings().alert_threshold]  # the drawn threshold is the default one


def test_dag_documentation_lists_every_action_the_policy_allows():
    """Each DAG's doc_md names the IAM actions it needs (README, "Deploying to Amazon MWAA"):
    together they are the template's policy, less the actions Athena needs on the caller's behalf."""
    import re

    named: set[str] = set()
    for dag_file in sorted((ROOT / "dags").glob("*.py")):
        found = re.search(r"\*\*IAM:\*\*(.*?)(?:\n\n|\"\"\"|\n\*\*)", dag_file.read_text(), re.S)
        assert found, f"{dag_file.name}'s documentation has no **IAM:** list"
        named |= set(re.findall(r"\b([a-z0-9-]+:[A-Z][A-Za-z]+)\b", found.group(1)))
    allowed = policy_actions()
    assert allowed - named - set(IMPLIED) == set(), f"the DAGs' documentation omits: {sorted(allowed - named - set(IMPLIED))}"
    assert named - allowed == set(), f"the DAGs' documentation names actions the policy does not allow: {sorted(named - allowed)}"
