"""The forewarn page (the Airflow UI plugin's app) on evidence and incident records in the formats
the comparison writes: charts per series and metric, incidents with links to their evidence, and
no access without an Airflow login."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from forewarn.ui import create_app

from helpers import fresh_settings, seed_page


@pytest.fixture(scope="module")
def page(clients):
    settings = fresh_settings(clients)
    flagged = seed_page(settings, clients.s3)
    app = create_app(source=lambda: (settings, clients.s3, "https://console.example/dashboards"), auth=False)
    return TestClient(app), settings, flagged


@pytest.mark.stack
def test_page_draws_every_series_against_its_band_and_lists_incidents(page):
    client, settings, flagged = page
    resp = client.get("/")
    assert resp.status_code == 200
    body = resp.text
    figures = re.findall(r"<figure data-series='([^']+)' data-metric='([^']+)'>", body)
    assert figures == [("orders.count", "event_count"), ("payments.value", "value_mean")]
    assert body.count('class="band"') == 2 and body.count('class="actual"') == 2 and body.count('class="mean"') == 2
    assert body.count('class="anomaly"') == flagged
    assert body.count('class="incident"') == 2  # each incident's start marked on its own chart
    assert "<b id='open-count'>1</b>" in body and "<b id='resolved-count'>1</b>" in body
    assert "<b id='last-interval'>2026-11-20 11:55 UTC</b>" in body
    rows = re.findall(r"<tr class='incident-row'><td class='(\w+)'>\w+</td><td>([^<]+)</td>", body)
    assert rows == [("open", "orders.count"), ("resolved", "payments.value")]  # open first
    assert "20 vs expected 100 (95% band 90–110): dropped below its forecast; also value_mean above from 11:35" in body
    assert "https://console.example/dashboards" in body


@pytest.mark.stack
def test_evidence_link_opens_the_interval_that_started_the_incident(page):
    client, settings, _ = page
    body = client.get("/").text
    link = re.search(r'<a href="/forewarn(/evidence\?key=[^"]+&series=orders.count)">evidence</a>', body).group(1)
    resp = client.get(link.replace("&amp;", "&"))
    assert resp.status_code == 200
    assert "compare/dt=2026-11-20/1130.parquet" in resp.text
    assert resp.text.count("<tr class='open'>") == 1  # the anomalous bucket of that interval, for that series
    assert "payments.value" not in resp.text.split("<table")[1]


@pytest.mark.stack
def test_summary_and_bad_requests(page):
    client, settings, flagged = page
    summary = client.get("/api/summary", params={"hours": 1}).json()
    assert summary["intervals"] == 12 and summary["series"] == ["orders.count", "payments.value"]
    assert summary["anomalous_buckets"] == flagged
    assert [i["status"] for i in summary["incidents"]] == ["open", "resolved"]
    assert summary["incidents"][0]["refs"] == {"sns": "msg-1"}
    assert client.get("/evidence", params={"key": "../../etc/passwd"}).status_code == 422
    assert client.get("/evidence", params={"key": "compare/dt=2020-01-01/0000.parquet"}).status_code == 404
    assert client.get("/", params={"hours": 0}).status_code == 422


@pytest.mark.stack
def test_empty_bucket_says_what_is_missing(clients):
    settings = fresh_settings(clients)
    client = TestClient(create_app(source=lambda: (settings, clients.s3, None), auth=False))
    body = client.get("/").text
    assert "id='no-series'" in body and "id='no-incidents'" in body and "<b id='last-interval'>never</b>" in body


def test_page_requires_an_airflow_login():
    def source():
        raise AssertionError("nothing is read before the user is known")

    client = TestClient(create_app(source=source, auth=True))
    assert client.get("/").status_code == 401
    assert client.get("/api/summary").status_code == 401


def test_page_access_is_decided_on_the_compare_dag_not_on_the_callers_dag_id(monkeypatch):
    """A user allowed to read one unrelated DAG must not read every series by naming that DAG in
    the URL: the page asks for read access to forewarn_compare, whatever the query says."""
    from airflow.api_fastapi.core_api import security

    asked: list[str | None] = []

    class AuthManager:
        def is_authorized_dag(self, *, method, access_entity=None, details=None, user=None):
            asked.append(details.id if details else None)
            return details is not None and details.id == "unrelated_dag"  # the only DAG this user may read

    monkeypatch.setattr(security, "get_auth_manager", lambda: AuthManager())
    monkeypatch.setattr(security.DagModel, "get_team_name", staticmethod(lambda dag_id: None))
    app = create_app(source=lambda: (_ for _ in ()).throw(AssertionError("read before access was granted")), auth=True)
    app.dependency_overrides[security.get_user] = lambda: object()
    client = TestClient(app)
    assert client.get("/", params={"dag_id": "unrelated_dag"}).status_code == 403
    assert client.get("/api/summary", params={"dag_id": "unrelated_dag"}).status_code == 403
    assert set(asked) == {"forewarn_compare"}
