"""The forewarn page (the Airflow UI plugin's app) on evidence and incident records in the formats
the comparison writes: charts per series and metric, incidents with links to their evidence, and
no access without an Airflow login."""

from __future__ import annotations

import re
from datetime import timedelta

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
    assert client.get("/series", params={"name": "orders.count"}).status_code == 401
    assert client.get("/series").status_code == 401  # refused before the parameters are looked at
    assert client.get("/incident", params={"token": "0" * 64}).status_code == 401


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


@pytest.mark.stack
def test_an_open_incident_is_acknowledged_labelled_and_snoozed_from_the_page(clients):
    """Each open incident row has the three forms; posting them writes what ``forewarn ack``,
    ``forewarn label`` and ``forewarn snooze`` write (read back by the modules the comparison
    and training use), a bad value is refused with the reason, and a form from another site is
    refused."""
    from forewarn.acks import read_acks
    from forewarn.labels import read_labels
    from forewarn.maintenance import read_windows

    settings = fresh_settings(clients)
    seed_page(settings, clients.s3)
    client = TestClient(create_app(source=lambda: (settings, clients.s3, None), auth=False))
    body = client.get("/").text
    episodes = re.findall(r"<form method='post' action='/forewarn/actions/ack' class='ack'><input type='hidden' name='episode' value='([^']+)'>", body)
    assert len(episodes) == 1 and body.count("action='/forewarn/actions/label'") == 1  # the open incident only
    episode = episodes[0].replace("&#x27;", "'")
    assert client.post("/actions/ack", data={"episode": episode, "note": "on it"}).status_code == 200
    assert client.post("/actions/label", data={"episode": episode, "kind": "not_anomaly", "note": "load test"}).status_code == 200
    resp = client.post("/actions/snooze", data={"episode": episode, "minutes": "90"})
    assert resp.status_code == 200 and "snoozed by forewarn page until" in resp.text
    acks, _ = read_acks(settings, clients.s3)
    labels, _ = read_labels(settings, clients.s3)
    windows, _ = read_windows(settings, clients.s3)
    assert acks[episode].text == "acknowledged by forewarn page: on it"
    assert [(lb.target, lb.kind, lb.note) for lb in labels] == [(episode, "not_anomaly", "load test")]
    assert [w.series for w in windows] == [episode.split("|")[0]] and (windows[0].end - windows[0].start).total_seconds() == 90 * 60
    bad = client.post("/actions/label", data={"episode": episode, "kind": "maybe"})
    assert bad.status_code == 400 and "&#x27;as&#x27; is &#x27;maybe&#x27;" in bad.text
    assert client.post("/actions/snooze", data={"episode": episode, "minutes": "0"}).status_code == 400
    forged = client.post("/actions/ack", data={"episode": episode}, headers={"Origin": "https://evil.example"})
    assert forged.status_code == 403


def test_only_an_anomaly_episode_has_the_forms():
    import pandas as pd

    from forewarn.ui import PageData, render_page

    base = {"status": "open", "refs": {"sns": {}}, "metric": "event_count", "started": "2026-11-20T11:30:00+00:00"}
    incidents = [{**base, "series": "orders.count", "episode": "orders.count|2026-11-20T11:30"},
                 {**base, "series": "orders.count", "metric": "event_count:forecast_quality",
                  "episode": "orders.count|model-quality:event_count|2026-11-20T11:00"},
                 {**base, "series": "forewarn", "episode": "forewarn|blind|2026-11-20T11:00"}]
    body = render_page(PageData(bucket="b", evidence=pd.DataFrame(columns=["series", "metric"]), incidents=incidents, intervals=[]))
    assert body.count("action='/forewarn/actions/ack'") == 1 and "value='orders.count|2026-11-20T11:30'" in body


def test_posting_an_action_needs_permission_to_edit_the_compare_dag_and_records_the_user(monkeypatch):
    """A user who may read forewarn_compare but not edit it sees the page and is refused the
    forms; one who may edit it is recorded as the label's author."""
    from airflow.api_fastapi.core_api import security

    asked: list[tuple[str, str | None]] = []
    may_edit = {"value": False}
    written: list[tuple[str, bytes]] = []

    class AuthManager:
        def is_authorized_dag(self, *, method, access_entity=None, details=None, user=None):
            asked.append((method, details.id if details else None))
            return method == "GET" or may_edit["value"]

    class User:
        def get_name(self):
            return "carol"

    class S3:
        def put_object(self, Bucket, Key, Body, **_):  # noqa: N803 - boto3's names
            written.append((Key, Body))

    from forewarn.config import Settings

    monkeypatch.setattr(security, "get_auth_manager", lambda: AuthManager())
    monkeypatch.setattr(security.DagModel, "get_team_name", staticmethod(lambda dag_id: None))
    app = create_app(source=lambda: (Settings(bucket="b"), S3(), None), auth=True)
    app.dependency_overrides[security.get_user] = lambda: User()
    client = TestClient(app)
    form = {"episode": "orders.count|2026-11-20T11:30", "kind": "expected"}
    assert client.post("/actions/label", data=form).status_code == 403 and written == []
    may_edit["value"] = True
    assert client.post("/actions/label", data=form).status_code == 200
    assert ("PUT", "forewarn_compare") in asked and all(dag == "forewarn_compare" for _, dag in asked)
    [(key, body)] = written
    assert key.startswith("labels/") and b'"by": "carol"' in body


@pytest.mark.stack
def test_each_series_shows_the_settings_that_apply_to_it_and_a_bad_file_says_why(clients):
    settings = fresh_settings(clients)
    seed_page(settings, clients.s3)
    client = TestClient(create_app(source=lambda: (settings, clients.s3, None), auth=False))
    clients.s3.put_object(Bucket=settings.bucket, Key=settings.series_settings_key,
                          Body=b"series:\n  - match: 'orders.*'\n    direction: below\n    threshold: 0.8\n"
                               b"  - match: 'orders.count'\n    sinks: [sns]\n    tz: Europe/Berlin\n")
    body = client.get("/").text
    captions = dict(re.findall(r"<figure data-series='([^']+)'[^>]*><figcaption>.*?</figcaption>"
                               r"(?:<div class='muted settings'>([^<]*)</div>)?", body))
    assert captions["orders.count"] == "settings (lines 2, 5): threshold 0.8; direction below; sinks sns; tz Europe/Berlin"
    assert captions["payments.value"] == ""  # no rule matches it: the defaults, nothing said
    clients.s3.put_object(Bucket=settings.bucket, Key=settings.series_settings_key, Body=b"series:\n  - match: x\n    direction: up\n")
    assert "id='settings-problem'" in client.get("/").text and "&#x27;direction&#x27; is &#x27;up&#x27;" in client.get("/").text


@pytest.mark.stack
def test_each_series_shows_its_forecasts_quality_and_its_labelled_precision(clients):
    """The newest detector state's rolling day of model quality (``forewarn.quality``) and the
    week's labelled episodes (``LabelPrecision``), each on its series' chart."""
    from datetime import UTC, datetime, timedelta

    from forewarn.detect import DetectorConfig, Memory
    from forewarn.labels import Label, write_label
    from forewarn.state import State, write_state

    settings = fresh_settings(clients)
    seed_page(settings, clients.s3)
    cfg = DetectorConfig()
    memory = Memory.empty(3, cfg)  # the third: nothing counted yet
    memory.q_inside[0], memory.q_error[0] = 0.5, 3.0  # orders.count: a whole day, half inside, 3x the error
    memory.q_pos[0], memory.q_since[0] = cfg.quality_window, 1.0
    memory.q_inside[1, :100], memory.q_error[1, :100] = 1.0, 0.9  # payments.value: the day so far, all inside
    memory.q_pos[1] = 100
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    write_state(settings, clients.s3, now - timedelta(minutes=now.minute % 5),
                State(["orders.count|event_count", "payments.value|value_mean", "new.series|event_count"], memory, {}, {}))
    day, other = ((now - timedelta(days=1, minutes=m)).strftime("%Y-%m-%dT%H:%M") for m in (0, 5))  # two episodes, whatever the minute
    old = (now - timedelta(days=9)).strftime("%Y-%m-%dT%H:%M")
    for episode, kind in ((f"orders.count|{day}", "real"), (f"orders.count|{other}", "not_anomaly"),
                          (f"orders.count|{old}", "not_anomaly")):  # the last one is older than a week
        write_label(settings, clients.s3, Label(target=episode, kind=kind))
    body = TestClient(create_app(source=lambda: (settings, clients.s3, None), auth=False)).get("/").text
    lines = re.findall(r"<figure data-series='([^']+)'.*?<div class='quality (\w+)'>([^<]*)</div>", body)
    assert lines == [("orders.count", "open", "forecast over the last day: 50% inside its 95% band, error 3.0× validation — degraded"),
                     ("payments.value", "muted", "forecast over the day so far: 100% inside its 95% band, error 0.9× validation")]
    assert "<div class='muted precision'>labelled this week: 1 real of 2 (precision 50%)</div>" in body
    assert body.count("class='muted precision'") == 1
    summary = TestClient(create_app(source=lambda: (settings, clients.s3, None), auth=False)).get("/api/summary").json()
    assert summary["label_precision"] == {"orders.count": {"real": 1, "labelled": 2}}
    assert summary["model_quality"]["orders.count|event_count"]["degraded"] is True
    assert summary["model_quality"]["new.series|event_count"] == {"full": False, "coverage": None, "error": None, "degraded": False}


def test_many_series_are_ranked_searched_filtered_by_dimension_and_paged():
    """60 series-metrics (roll-ups of two regions among them): the page draws 24 at a time, the
    one with an open incident first, then by likelihood; a search and a dimension filter narrow
    the list; the links page through it with the filters kept."""
    import pandas as pd

    from forewarn.ui import PER_PAGE, PageData, render_page

    rows = []
    names = [f"svc{i:02d}.requests" for i in range(20)]
    names += [f"{n}/region={r}" for n in names[:20] for r in ("eu", "us")]
    for k, name in enumerate(names):
        for b in range(3):
            rows.append({"series": name, "metric": "event_count", "bucket_start": pd.Timestamp("2026-11-20 10:00", tz="UTC") + pd.Timedelta(minutes=5 * b),
                         "actual": 1.0, "mean": 1.0, "lower_95": 0.0, "upper_95": 2.0, "likelihood": k / 100, "anomalous": 0})
    ev = pd.DataFrame(rows)
    incidents = [{"status": "open", "series": "svc03.requests", "metric": "event_count", "started": "2026-11-20T10:05:00+00:00"}]
    data = PageData(bucket="b", evidence=ev, incidents=incidents, intervals=["compare/dt=2026-11-20/1010.parquet"])
    figures = lambda body: re.findall(r"<figure data-series='([^']+)'", body)  # noqa: E731
    first = render_page(data)
    assert len(figures(first)) == PER_PAGE and figures(first)[0] == "svc03.requests"
    assert figures(first)[1] == "svc19.requests/region=us"  # then the highest likelihood
    assert "<b id='series-count'>60</b>" in first and "series-metrics 1–24 of 60" in first
    assert "page=2" in first and "rel='prev'" not in first
    last = render_page(data, page=3)
    assert len(figures(last)) == 60 - 2 * PER_PAGE and "rel='next'" not in last and "page=2" in last
    assert render_page(data, page=99).count("<figure") == 12  # past the end: the last page
    found = render_page(data, query="SVC07")
    assert sorted(figures(found)) == ["svc07.requests", "svc07.requests/region=eu", "svc07.requests/region=us"]
    eu = render_page(data, dims=["region=eu"])
    assert len(figures(eu)) == 20 and all(f.endswith("/region=eu") for f in figures(eu)) and "id='dim-filter'" in eu
    assert "dim=region%3Deu" not in eu  # one page only: no links
    paged = render_page(data, query="svc")
    assert "page=2&amp;q=svc" in paged  # the links keep the search


# --------------------------------------------------------------------------------------------
# A parent and its roll-ups: the series view, the drill-down and the incident view
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rollups(clients):
    settings = fresh_settings(clients)
    flagged = seed_page(settings, clients.s3, rollups=True)
    return TestClient(create_app(source=lambda: (settings, clients.s3, None), auth=False)), settings, flagged


def _href(body: str, pattern: str) -> str:
    import html

    return html.unescape(re.search(pattern, body).group(1)).removeprefix("/forewarn")


@pytest.mark.stack
def test_the_first_page_links_each_chart_to_its_series_view_and_each_incident_to_its_view(rollups):
    client, settings, flagged = rollups
    body = client.get("/").text
    figures = re.findall(r"<figure data-series='([^']+)' data-metric='([^']+)'><figcaption><a href='([^']+)'>", body)
    assert len(figures) == 24 and "series-metrics 1–24 of 29" in body
    assert [f[0] for f in figures[:2]] == ["orders.count", "sales.count"]  # the open incidents first
    assert figures[1][2] == "/forewarn/series?name=sales.count&amp;metric=event_count"
    assert "where: 100% region=eu; related: sales.count/region=eu, sales.count/channel=app, sales.count/channel=web" in body
    tokens = re.findall(r"<a class='incident-link' href='/forewarn/incident\?token=([0-9a-f]{64})'>", body)
    assert len(tokens) == 3
    assert client.get("/api/summary").json()["anomalous_buckets"] == flagged


@pytest.mark.stack
def test_a_parents_series_view_shows_its_history_and_each_childs_share_of_the_deviation(rollups):
    client, settings, _ = rollups
    resp = client.get("/series", params={"name": "sales.count", "metric": "event_count"})
    assert resp.status_code == 200
    body = resp.text
    assert "<h1>sales.count · event_count</h1>" in body and "24 buckets from 2026-11-20 10:00 to 2026-11-20 11:55 UTC" in body
    assert body.count('class="anomaly"') == 8 and body.count('class="episode"') == 1 and body.count('class="label"') == 1
    assert "since 2026-11-20 11:20" in body and "<b>100% region=eu</b> of it explained" in body
    tables = dict(re.findall(r"<h3 class='dimension'>by (\w+)</h3><table class='children' data-keys='\w+'>(.*?)</table>", body))
    assert list(tables) == ["region", "channel"]
    region = re.findall(r"<tr class='child( named)?'><td><a href='([^']+)'>([^<]+)</a></td>.*?<td class='share'>(?:<i[^>]*></i>)?([^<]+)</td>",
                        tables["region"])
    assert [(named, dims, share) for named, _, dims, share in region] == [(" named", "region=eu", "100%"), ("", "region=us", "0%")]
    assert region[0][1] == "/forewarn/series?name=sales.count%2Fregion%3Deu&amp;metric=event_count&amp;days=3"
    channel = re.findall(r"<a href='[^']+'>([^<]+)</a></td>.*?<td class='share'>(?:<i[^>]*></i>)?([^<]+)</td>", tables["channel"])
    assert channel == [("channel=app", "70%"), ("channel=web", "30%")]  # both needed for 80%: not the explanation
    assert "labelled real by alice: eu card payments down" in body and "<td>eu card payments down</td>" in body
    assert re.search(r"<tr class='incident-row'><td class='open'>open</td><td>sales.count · event_count</td>", body)


@pytest.mark.stack
def test_a_childs_series_view_links_back_to_its_parent_and_to_the_incident_it_joined(rollups):
    client, settings, _ = rollups
    body = client.get(_href(client.get("/series", params={"name": "sales.count"}).text,
                            r"<tr class='child named'><td><a href='([^']+)'>")).text
    assert "<h1>sales.count/region=eu · event_count</h1>" in body
    assert re.search(r"<div class='muted' id='rollup-of'>a roll-up of <a href='/forewarn/series\?name=sales.count&amp;metric=event_count"
                     r"&amp;days=3'>sales.count</a> for region=eu</div>", body)
    assert "sales.count · event_count (joined as related)" in body and "id='drilldown'" not in body
    assert body.count('class="anomaly"') == 8


@pytest.mark.stack
def test_the_incident_view_shows_its_facts_where_it_happened_its_members_and_the_chart_around_it(rollups):
    client, settings, _ = rollups
    home = client.get("/").text
    link = _href(home, r"<a class='incident-link' href='([^']+)'>46 vs expected")
    body = client.get(link).text
    facts = dict(re.findall(r"<tr><th>([^<]+)</th><td>(.*?)</td></tr>", body))
    assert facts["series"] == "<a href='/forewarn/series?name=sales.count&amp;metric=event_count'>sales.count</a>"
    assert facts["started"] == "2026-11-20 11:20" and facts["ended"] == "not yet" and facts["acknowledged"] == "no"
    assert facts["what happened"] == "46 vs expected 100 (95% band 90–110): dropped below its forecast"
    assert facts["opened in"] == "sns (msg-3)" and facts["episode"] == "sales.count|2026-11-20T11:20"
    assert "100% region=eu<ul id='contributors'><li class='contributor'><a href='/forewarn/series?name=sales.count%2Fregion%3Deu" in facts["where"]
    assert re.findall(r"<li><a href='[^']+'>([^<]+)</a></li>", body.split("id='related'")[1]) == [
        "sales.count/region=eu", "sales.count/channel=app", "sales.count/channel=web"]
    assert "class='ack'" in body  # open: the operators' forms are here too
    assert body.count('class="anomaly"') == 8 and body.count('class="episode"') == 1  # an hour before it to now
    resolved = _href(home, r"<a class='incident-link' href='([^']+)'>20 vs expected 100[^<]*</a></td><td>2026-11-20 10:20")
    body = client.get(resolved).text
    assert "id='no-related'" in body and "class='ack'" not in body and "<th>ended</th><td>2026-11-20 10:50</td>" in body


@pytest.mark.stack
def test_the_views_refuse_bad_parameters_and_say_what_is_missing(rollups):
    client, settings, _ = rollups
    for params in ({"name": "sales count"}, {"name": "sales.count", "days": 15}, {"name": "sales.count", "days": 0},
                   {"name": "sales.count", "metric": "Event-Count"}, {}):
        resp = client.get("/series", params=params)
        assert resp.status_code == 422, params
    assert "is not a series name" in client.get("/series", params={"name": "<script>"}).json()["detail"]
    assert client.get("/incident", params={"token": "../../x"}).status_code == 422
    missing = client.get("/incident", params={"token": "0" * 64})
    assert missing.status_code == 404 and f"incidents/{'0' * 64}.json" in missing.text
    gone = client.get("/series", params={"name": "no.such.series"})
    assert gone.status_code == 404 and "No evidence of no.such.series in the last 3 days" in gone.text
    other = client.get("/series", params={"name": "sales.count", "metric": "value_mean"})
    assert other.status_code == 404 and "it has event_count" in other.text
    assert client.get("/series", params={"name": "payments.value", "days": 1}).status_code == 200


@pytest.mark.stack
def test_an_evidence_object_rewritten_by_a_rerun_is_read_again(clients):
    """The page keeps parsed evidence by key and ETag: a rerun that rewrites an interval's
    object is seen at the next request, not the copy read before."""
    from forewarn.compare import read_evidence
    from forewarn.layout import evidence_key

    from helpers import PAGE_START

    settings = fresh_settings(clients)
    flagged = seed_page(settings, clients.s3)
    client = TestClient(create_app(source=lambda: (settings, clients.s3, None), auth=False))
    assert client.get("/api/summary").json()["anomalous_buckets"] == flagged
    key = evidence_key(settings, PAGE_START + timedelta(minutes=5 * 23))
    frame = read_evidence(clients.s3, settings.bucket, key).assign(anomalous=0)
    from forewarn.aggregate import parquet_bytes
    from forewarn.compare import _evidence_table

    clients.s3.put_object(Bucket=settings.bucket, Key=key, Body=parquet_bytes(_evidence_table(frame)))
    assert client.get("/api/summary").json()["anomalous_buckets"] == flagged - 1


@pytest.mark.stack
def test_a_compacted_day_gives_a_series_rows_from_one_object_until_an_interval_is_rewritten(clients):
    """``compact_day`` regroups a day's evidence by series; a series' rows then come from one
    part and equal those read object by object; an interval a rerun rewrites sends that day back
    to its objects until it is compacted again, and compacting an unchanged day writes nothing."""
    import pandas as pd

    from forewarn.aggregate import parquet_bytes
    from forewarn.compare import _evidence_table, read_evidence
    from forewarn.evidence import EvidenceCache, compact_day, list_evidence
    from forewarn.layout import evidence_key

    from helpers import PAGE_START

    settings = fresh_settings(clients)
    seed_page(settings, clients.s3, rollups=True)
    objects = list_evidence(clients.s3, settings.bucket, hours=24)

    def rows(series: str) -> tuple[pd.DataFrame, int]:
        cache = EvidenceCache()
        got = cache.series_rows(clients.s3, settings.bucket, objects, series)
        return got.sort_values(["series", "metric", "bucket_start"], ignore_index=True), cache.stats.get("day_parts", 0)

    by_object, parts = rows("sales.count")
    assert parts == 0 and len(by_object) and set(by_object["series"]) > {"sales.count"}  # its roll-ups come with it
    done = compact_day(clients.s3, settings.bucket, PAGE_START.date())
    assert done["objects"] == len(objects) and done["parts"] >= 2 and not done["fresh"]
    from_part, parts = rows("sales.count")
    assert parts == 1
    pd.testing.assert_frame_equal(from_part, by_object, check_dtype=False)
    assert compact_day(clients.s3, settings.bucket, PAGE_START.date())["fresh"]
    # a rerun rewrites one interval: that day is read object by object again, with the new rows
    key = evidence_key(settings, PAGE_START + timedelta(minutes=5 * 23))
    clients.s3.put_object(Bucket=settings.bucket, Key=key,
                          Body=parquet_bytes(_evidence_table(read_evidence(clients.s3, settings.bucket, key).assign(actual=-1.0))))
    objects = list_evidence(clients.s3, settings.bucket, hours=24)
    again, parts = rows("sales.count")
    assert parts == 0 and (again["actual"] == -1.0).sum() == (read_evidence(clients.s3, settings.bucket, key)["series"]
                                                               .str.startswith("sales.count")).sum()
    assert not compact_day(clients.s3, settings.bucket, PAGE_START.date())["fresh"]
    recompacted, parts = rows("sales.count")
    assert parts == 1
    pd.testing.assert_frame_equal(recompacted, again, check_dtype=False)
