"""The Incident Manager stand-in: accepts what the service's model accepts, refuses the rest,
and StartIncident with the same clientToken opens one record."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import requests

from forewarn.publish import Incident, IncidentManagerSink

STARTED = datetime(2026, 11, 27, 2, 30, tzinfo=UTC)


def incident(episode="orders.count|2026-11-27T02:30") -> Incident:
    return Incident(episode=episode, series="orders.count", metric="event_count", started=STARTED, direction="below",
                    actual=3.0, expected=31.5, lower=20.0, upper=43.0, likelihood=0.62, impact=3,
                    evidence_uri="s3://forewarn-data/compare/dt=2026-11-27/0230.parquet", dashboard_url="https://example.invalid/d")


@pytest.mark.stack
def test_incident_manager_sink_is_idempotent_and_readable(aws_stack, clients):
    plan = aws_stack["resources"]["response_plan"]
    sink = IncidentManagerSink(clients.client("ssm-incidents"), plan)
    first = sink.open(incident())
    again = sink.open(incident())  # a retried task
    assert first == again
    records = clients.client("ssm-incidents").list_incident_records()["incidentRecordSummaries"]
    mine = [r for r in records if r["arn"] == first["incident_record_arn"]]
    assert len(mine) == 1 and mine[0]["impact"] == 3 and mine[0]["status"] == "OPEN"
    assert "orders.count event_count dropped below its forecast" in mine[0]["title"]
    related = clients.client("ssm-incidents").list_related_items(incidentRecordArn=first["incident_record_arn"])["relatedItems"]
    assert {r["title"] for r in related} == {"forewarn evidence (S3)", "CloudWatch dashboard"}
    resolved = incident()
    resolved.ended = datetime(2026, 11, 27, 3, 10, tzinfo=UTC)
    sink.resolve(resolved, first)
    record = clients.client("ssm-incidents").get_incident_record(arn=first["incident_record_arn"])["incidentRecord"]
    assert record["status"] == "RESOLVED" and "resolvedTime" in record
    assert "Back within the forecast band since 2026-11-27 03:10 UTC." in record["summary"]


@pytest.mark.stack
def test_an_update_retitles_raises_impact_and_adds_one_timeline_event_under_retries(aws_stack, clients):
    client = clients.client("ssm-incidents")
    sink = IncidentManagerSink(client, aws_stack["resources"]["response_plan"])
    ref = sink.open(incident("orders.count|2026-11-27T05:00"))
    update = incident("orders.count|2026-11-27T05:00")
    update.metric, update.actual, update.impact, update.revision = "count", 2.0, 1, 1
    update.changes, update.updated = ["count below its forecast joined", "impact 3 -> 1"], datetime(2026, 11, 27, 5, 15, tzinfo=UTC)
    update.deviations = [
        {"metric": "value_mean", "direction": "above", "since": "2026-11-27T05:00:00+00:00", "actual": 80.0, "expected": 50.0,
         "lower_95": 40.0, "upper_95": 60.0, "likelihood": 0.65},
        {"metric": "count", "direction": "below", "since": "2026-11-27T05:15:00+00:00", "actual": 2.0, "expected": 31.5,
         "lower_95": 20.0, "upper_95": 43.0, "likelihood": 0.93},
    ]
    sink.update(update, ref)
    sink.update(update, ref)  # a retried task
    arn = ref["incident_record_arn"]
    record = client.get_incident_record(arn=arn)["incidentRecord"]
    assert record["impact"] == 1 and record["title"].startswith("orders.count count dropped below its forecast: 2 vs expected 31.5")
    assert "- value_mean above its forecast since 2026-11-27 05:00 UTC: 80 vs expected 50" in record["summary"]
    assert "- count below its forecast since 2026-11-27 05:15 UTC" in record["summary"]
    (event,) = client.list_timeline_events(incidentRecordArn=arn)["eventSummaries"]
    assert event["eventType"] == "Custom Event" and event["eventTime"] == update.updated
    data = json.loads(client.get_timeline_event(incidentRecordArn=arn, eventId=event["eventId"])["event"]["eventData"])
    assert data["changes"] == update.changes and data["impact"] == 1 and len(data["deviations"]) == 2


@pytest.mark.stack
@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"impact": 9}, "above the maximum 5"),
        ({"title": "x" * 300}, "longer than 200"),
        ({"triggerDetails": {"source": "forewarn", "timestamp": 1.0, "rawData": 5}}, "rawData"),
        ({"relatedItems": [{"identifier": {"type": "NOT_A_TYPE", "value": {"url": "u"}}}]}, "NOT_A_TYPE"),
        ({"unknownField": 1}, "Unknown parameter"),
    ],
)
def test_requests_aws_would_refuse_are_refused(aws_stack, body, message):
    plan = aws_stack["resources"]["response_plan"]
    response = requests.post(f"{aws_stack['incidents_endpoint']}/startIncident", json={"responsePlanArn": plan, **body}, timeout=10)
    assert response.status_code == 400
    assert response.headers["x-amzn-ErrorType"] == "ValidationException"
    assert message in json.loads(response.text)["message"]


@pytest.mark.stack
def test_unknown_plan_and_unserved_operations_say_so(aws_stack, clients):
    client = clients.client("ssm-incidents")
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.start_incident(responsePlanArn="arn:aws:ssm-incidents::123456789012:response-plan/none")
    response = requests.post(f"{aws_stack['incidents_endpoint']}/listReplicationSets", json={}, timeout=10)
    assert response.status_code == 501 and "not served" in response.text


@pytest.mark.stack
def test_an_acknowledgement_is_one_timeline_event_under_retries(aws_stack, clients):
    client = clients.client("ssm-incidents")
    sink = IncidentManagerSink(client, aws_stack["resources"]["response_plan"])
    acked = incident("orders.count|2026-11-27T07:00")
    ref = sink.open(acked)
    acked.acknowledgement, acked.updated = "acknowledged by alice: on it", datetime(2026, 11, 27, 7, 20, tzinfo=UTC)
    sink.acknowledge(acked, ref)
    sink.acknowledge(acked, ref)  # a retried task
    (event,) = client.list_timeline_events(incidentRecordArn=ref["incident_record_arn"])["eventSummaries"]
    data = json.loads(client.get_timeline_event(incidentRecordArn=ref["incident_record_arn"], eventId=event["eventId"])["event"]["eventData"])
    assert data == {"source": "forewarn", "acknowledged": "acknowledged by alice: on it"} and event["eventTime"] == acked.updated


def test_opscenter_sink_deduplicates_on_the_episode_token():
    import boto3
    from botocore.stub import ANY, Stubber

    from forewarn.publish import OpsCenterSink

    ssm = boto3.client("ssm", region_name="us-east-1")
    inc = incident()
    with Stubber(ssm) as stub:
        stub.add_response("create_ops_item", {"OpsItemId": "oi-123"}, {
            "Title": ANY, "Description": ANY, "Source": "forewarn", "Severity": "3",
            "OperationalData": {"/aws/dedup": {"Value": json.dumps({"dedupString": inc.token}), "Type": "SearchableString"}},
        })
        stub.add_response("update_ops_item", {}, {"OpsItemId": "oi-123", "Title": ANY, "Severity": "1", "Description": ANY})
        stub.add_response("update_ops_item", {}, {"OpsItemId": "oi-123", "Status": "InProgress"})  # acknowledged
        stub.add_response("update_ops_item", {}, {"OpsItemId": "oi-123", "Status": "Resolved"})
        sink = OpsCenterSink(ssm)
        ref = sink.open(inc)
        inc.impact, inc.revision = 1, 1
        sink.update(inc, ref)
        sink.acknowledge(inc, ref)
        sink.resolve(inc, ref)
        stub.assert_no_pending_responses()
    assert ref == {"ops_item_id": "oi-123"}


@pytest.mark.stack
@pytest.mark.timeout(300)
def test_the_aws_cli_reads_the_stand_in(aws_stack, clients, tmp_path):
    """`aws ssm-incidents list-incident-records --endpoint-url …` as the README says. The AWS CLI
    (v1, from PyPI) needs an older `rsa` than Airflow's constraints allow, so it gets a virtual
    environment of its own, as a user would install it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    uv = Path(sys.executable).with_name("uv")
    venv = tmp_path / "awscli"
    subprocess.run([str(uv), "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, capture_output=True)
    subprocess.run([str(uv), "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), "awscli"], check=True, capture_output=True)
    sink = IncidentManagerSink(clients.client("ssm-incidents"), aws_stack["resources"]["response_plan"])
    opened = sink.open(incident("orders.count|2026-11-27T04:00"))
    update = incident("orders.count|2026-11-27T04:00")
    update.revision, update.changes, update.updated = 1, ["impact 3 -> 2"], datetime(2026, 11, 27, 4, 10, tzinfo=UTC)
    sink.update(update, opened)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}

    def aws(*args: str) -> dict:
        out = subprocess.run([str(venv / "bin" / "aws"), "ssm-incidents", *args, "--endpoint-url", aws_stack["incidents_endpoint"],
                              "--output", "json"], env=env, capture_output=True, text=True, check=False)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    records = aws("list-incident-records")["incidentRecordSummaries"]
    (mine,) = [r for r in records if r["arn"] == opened["incident_record_arn"]]
    assert "orders.count event_count dropped below its forecast" in mine["title"] and mine["status"] == "OPEN"
    (event,) = aws("list-timeline-events", "--incident-record-arn", opened["incident_record_arn"])["eventSummaries"]
    assert event["eventType"] == "Custom Event"


def test_impact_follows_how_far_beyond_the_threshold_the_peak_is():
    from forewarn.publish import impact_for

    threshold = 0.6225
    peaks = [threshold, 0.66, 0.70, 0.75, 0.85, 0.95, 0.999]
    impacts = [impact_for(p, threshold) for p in peaks]
    assert impacts[0] == 4 and impacts[-1] == 1
    assert impacts == sorted(impacts, reverse=True) and set(impacts) == {1, 2, 3, 4}
    assert impact_for(0.70, 0.53) < impact_for(0.70, 0.6225)
