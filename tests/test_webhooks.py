"""The PagerDuty and Slack sinks, and their stand-ins: each stand-in refuses what the service
refuses; the sinks send what it accepts, deduplicate and resolve; the registry builds them
from Airflow connections; a real comparison pages once and resolves."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import requests

from forewarn.local.webhooks import SLACK_PATH, WebhookServer
from forewarn.publish import SINKS, Incident, make_sinks
from forewarn.webhooks import PagerDutySink, SinkRefused, SlackSink, post_json

KEY = "0123456789abcdef0123456789abcdef"  # a routing key has 32 characters
STARTED = datetime(2026, 11, 27, 2, 30, tzinfo=UTC)


def incident(episode: str = "orders.count|2026-11-27T02:30") -> Incident:
    return Incident(episode=episode, series="orders.count", metric="event_count", started=STARTED, direction="below",
                    actual=3.0, expected=31.5, lower=20.0, upper=43.0, likelihood=0.62, impact=2,
                    evidence_uri="s3://forewarn-data/compare/dt=2026-11-27/0230.parquet", dashboard_url="https://example.invalid/d")


@pytest.fixture(scope="module")
def hooks():
    server = WebhookServer().start()
    yield server
    server.stop()


def trigger(**changes) -> dict:
    body = {"routing_key": KEY, "event_action": "trigger", "dedup_key": "k",
            "payload": {"summary": "orders fell", "source": "forewarn", "severity": "error"}}
    body.update(changes)
    return body


@pytest.mark.parametrize(("body", "says"), [
    (trigger(routing_key="short"), "routing_key"),
    (trigger(event_action="page"), "event_action"),
    (trigger(payload={"source": "forewarn", "severity": "error"}), "payload.summary"),
    (trigger(payload={"summary": "x" * 1025, "source": "forewarn", "severity": "error"}), "longer than 1024"),
    (trigger(payload={"summary": "s", "source": "forewarn", "severity": "high"}), "payload.severity"),
    (trigger(payload={"summary": "s", "source": "forewarn", "severity": "info", "timestamp": "yesterday"}), "timestamp"),
    ({"routing_key": KEY, "event_action": "resolve"}, "'dedup_key' is required"),
    (trigger(links=[{"text": "no href"}]), "href"),
    ([1, 2], "JSON object"),
])
def test_the_pagerduty_stand_in_refuses_what_the_events_api_refuses(hooks, body, says):
    response = requests.post(hooks.pagerduty_url, json=body, timeout=5)
    assert response.status_code == 400
    assert response.json()["status"] == "invalid event" and says in " ".join(response.json()["errors"])


@pytest.mark.parametrize(("path", "body", "status", "word"), [
    (SLACK_PATH, [1], 400, "invalid_payload"),
    (SLACK_PATH, {"username": "forewarn"}, 400, "no_text"),
    (SLACK_PATH, {"text": "t", "blocks": [{"type": "banner"}]}, 400, "invalid_blocks"),
    (SLACK_PATH, {"text": "t", "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}]}, 400, "invalid_blocks"),
    (SLACK_PATH, {"text": "t", "blocks": [{"type": "divider"}] * 51}, 400, "invalid_blocks"),
    ("/services/T0/B0/wrong", {"text": "t"}, 404, "no_service"),
])
def test_the_slack_stand_in_refuses_what_an_incoming_webhook_refuses(hooks, path, body, status, word):
    response = requests.post(hooks.endpoint + path, json=body, timeout=5)
    assert (response.status_code, response.text) == (status, word)


def test_pagerduty_sink_pages_once_per_episode_and_resolves(hooks):
    sink = PagerDutySink(KEY, hooks.pagerduty_url)
    ref = sink.open(incident())
    assert sink.open(incident()) == ref  # a retried task: the same dedup_key, the same alert
    changed = incident()
    changed.revision, changed.changes, changed.impact = 1, ["impact 2 -> 1"], 1
    sink.update(changed, ref)
    ended = incident()
    ended.ended = STARTED + timedelta(hours=1)
    sink.resolve(ended, ref)
    alerts = requests.get(hooks.endpoint + "/pagerduty/alerts", timeout=5).json()
    alert = alerts[ref["dedup_key"]]
    assert ref["dedup_key"] == incident().token
    assert alert["status"] == "resolved" and alert["severity"] == "critical"  # impact 1 after the update
    assert [e["event_action"] for e in alert["events"]] == ["trigger", "trigger", "trigger", "resolve"]
    assert alert["summary"].startswith("orders.count event_count dropped below its forecast")


def test_an_acknowledgement_acknowledges_the_pagerduty_alert_and_says_so_on_slack(hooks):
    acked = incident("orders.count|2026-11-27T05:00")
    ref = PagerDutySink(KEY, hooks.pagerduty_url).open(acked)
    acked.acknowledgement = "acknowledged by alice: on it"
    PagerDutySink(KEY, hooks.pagerduty_url).acknowledge(acked, ref)
    SlackSink(hooks.slack_url).acknowledge(acked, {"posted": True})
    alert = requests.get(hooks.endpoint + "/pagerduty/alerts", timeout=5).json()[ref["dedup_key"]]
    assert alert["status"] == "acknowledged" and [e["event_action"] for e in alert["events"]] == ["trigger", "acknowledge"]
    last = requests.get(hooks.endpoint + "/slack/messages", timeout=5).json()[-1]
    assert "acknowledged" in last["text"] and "alice: on it" in json.dumps(last["blocks"])


def test_a_refused_event_says_why_and_is_not_retried(hooks):
    with pytest.raises(SinkRefused, match="routing_key"):
        PagerDutySink("not-a-key", hooks.pagerduty_url).open(incident())
    wrong = hooks.endpoint + "/services/T0/B0/SECRETPATH"
    with pytest.raises(SinkRefused, match="no_service") as err:
        SlackSink(wrong).open(incident())
    assert "SECRETPATH" not in str(err.value)


def test_throttling_and_server_errors_are_retried(monkeypatch):
    monkeypatch.setattr("forewarn.webhooks.time.sleep", lambda _s: None)

    class Flaky:
        def __init__(self):
            self.codes = [429, 503, 202]

        def post(self, url, json, timeout):  # noqa: A002 - requests' name
            response = requests.Response()
            response.status_code = self.codes.pop(0)
            response._content = b'{"status": "success", "dedup_key": "k"}'
            return response

    flaky = Flaky()
    assert post_json("https://events.invalid/v2/enqueue", {}, (202,), flaky).json()["dedup_key"] == "k"
    assert flaky.codes == []
    # a service that never recovers: the error names its host, never the webhook's secret path
    down = Flaky()
    down.codes = [503] * 4
    with pytest.raises(ConnectionError) as err:
        post_json("https://hooks.slack.invalid/services/T0/B0/SECRET", {}, (200,), down)
    assert "hooks.slack.invalid" in str(err.value) and "SECRET" not in str(err.value)
    # a service that does not deduplicate (Slack) is not sent the same message again after a 5xx
    once = Flaky()
    once.codes = [503, 200]
    with pytest.raises(ConnectionError, match="503 to 1 tries"):
        post_json("https://hooks.slack.invalid/services/T0/B0/S", {}, (200,), once, idempotent=False)
    assert once.codes == [200]


def test_slack_sink_posts_what_slack_accepts(hooks):
    sink = SlackSink(hooks.slack_url)
    before = len(requests.get(hooks.endpoint + "/slack/messages", timeout=5).json())
    long = incident()
    long.deviations = [{"metric": "event_count", "direction": "below", "since": "2026-11-27T02:30:00+00:00", "actual": 3.0,
                        "expected": 31.5, "lower_95": 20.0, "upper_95": 43.0, "likelihood": 0.62}] * 200  # a summary over 3,000 characters
    ref = sink.open(long)
    sink.update(incident(), ref)
    sink.resolve(incident(), ref)
    messages = requests.get(hooks.endpoint + "/slack/messages", timeout=5).json()[before:]
    assert [m["text"].split(":", 2)[1] for m in messages] == ["rotating_light", "arrow_up", "white_check_mark"]
    # a series name is shown as text, never as a mention or a link
    loud = incident("<!channel>|2026-11-27T02:30")
    loud.series = "<!channel>"
    sink.open(loud)
    last = requests.get(hooks.endpoint + "/slack/messages", timeout=5).json()[-1]
    assert "<!channel>" not in json.dumps(last) and "&lt;!channel&gt;" in last["text"]


def test_the_registry_builds_sinks_from_airflow_connections(hooks, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_FOREWARN_PAGERDUTY", json.dumps({"conn_type": "http", "host": hooks.pagerduty_url, "password": KEY}))
    monkeypatch.setenv("AIRFLOW_CONN_FOREWARN_SLACK", json.dumps({"conn_type": "http", "password": hooks.slack_url}))
    pagerduty, slack = make_sinks("pagerduty, slack", clients=None, sns_topic_arn=None, response_plan_arn=None)
    assert (pagerduty.url, pagerduty.routing_key, slack.webhook_url) == (hooks.pagerduty_url, KEY, hooks.slack_url)
    assert set(SINKS) >= {"sns", "incident_manager", "opscenter", "pagerduty", "slack"}
    with pytest.raises(ValueError, match="use sns, incident_manager, opscenter, pagerduty, slack, email"):
        make_sinks("pager", clients=None, sns_topic_arn=None, response_plan_arn=None)
    monkeypatch.setenv("AIRFLOW_CONN_FOREWARN_SLACK", json.dumps({"conn_type": "http", "password": "not a url"}))
    with pytest.raises(ValueError, match="incoming webhook's URL"):
        make_sinks("slack", clients=None, sns_topic_arn=None, response_plan_arn=None)
    # the URI form keeps the endpoint's port and path
    monkeypatch.setenv("AIRFLOW_CONN_FOREWARN_PAGERDUTY", f"http://:{KEY}@127.0.0.1:8080/v2/enqueue")
    (uri_form,) = make_sinks("pagerduty", clients=None, sns_topic_arn=None, response_plan_arn=None)
    assert (uri_form.url, uri_form.routing_key) == ("http://127.0.0.1:8080/v2/enqueue", KEY)
    monkeypatch.delenv("AIRFLOW_CONN_FOREWARN_PAGERDUTY")
    with pytest.raises(LookupError, match="forewarn_pagerduty"):
        make_sinks("pagerduty", clients=None, sns_topic_arn=None, response_plan_arn=None)


@pytest.mark.stack
def test_a_drop_pages_once_where_its_series_is_routed_and_a_rerun_pages_again_never(clients, hooks):
    """A real comparison over a drop, with SNS, PagerDuty and Slack as its sinks and the series
    routed to the last two by its settings: one alert, triggered when the drop is found; nothing
    of it on SNS; rerunning the interval that found it sends nothing new."""
    from test_compare import drained, drop_world, sns_to_queue

    from forewarn.aggregate import make_engine
    from forewarn.compare import compare_interval

    settings, trained_until, drop_at, end = drop_world(clients)
    engine = make_engine(settings, clients)
    sns, sqs, queue = sns_to_queue(clients, settings)
    sinks = [*sns, PagerDutySink(KEY, hooks.pagerduty_url), SlackSink(hooks.slack_url)]
    clients.s3.put_object(Bucket=settings.bucket, Key=settings.series_settings_key,
                          Body=b"series:\n  - match: 'orders.*'\n    sinks: [pagerduty, slack]\n")
    cloudwatch = clients.client("cloudwatch")
    before_alerts = set(requests.get(hooks.endpoint + "/pagerduty/alerts", timeout=5).json())
    before_messages = len(requests.get(hooks.endpoint + "/slack/messages", timeout=5).json())
    summaries, t = [], trained_until
    while t < end:
        summaries.append(compare_interval(settings, engine, clients.s3, cloudwatch, sinks, t, t + timedelta(minutes=15),
                                          end + timedelta(minutes=30)))
        t += timedelta(minutes=15)
    assert sum(s["incidents_opened"] for s in summaries) == 1
    alerts = requests.get(hooks.endpoint + "/pagerduty/alerts", timeout=5).json()
    [new] = set(alerts) - before_alerts
    assert alerts[new]["status"] == "triggered" and "orders.count" in alerts[new]["summary"] and "below" in alerts[new]["summary"]
    assert not [m for m in drained(sqs, queue) if m["series"] == "orders.count"]
    opened_at = next(i for i, s in enumerate(summaries) if s["incidents_opened"])
    start = trained_until + timedelta(minutes=15 * opened_at)
    events = len(alerts[new]["events"])
    messages = len(requests.get(hooks.endpoint + "/slack/messages", timeout=5).json())
    again = compare_interval(settings, engine, clients.s3, cloudwatch, sinks, start, start + timedelta(minutes=15), end)
    assert again["incidents_opened"] == 0
    assert len(requests.get(hooks.endpoint + "/pagerduty/alerts", timeout=5).json()[new]["events"]) == events
    assert len(requests.get(hooks.endpoint + "/slack/messages", timeout=5).json()) == messages > before_messages


@pytest.mark.stack
def test_the_email_sink_sends_through_ses_from_a_verified_sender_only(clients):
    """SES (moto on the embedded stack) refuses a sender it has not verified, as SES does; from a
    verified one the sink sends a message for the opening, the update and the resolution."""
    from botocore.exceptions import ClientError

    from forewarn.publish import EmailSink

    ses = clients.client("ses")
    with pytest.raises(ClientError, match="MessageRejected|not verified"):
        EmailSink(ses, "nobody@forewarn.invalid", ["oncall@example.com"]).open(incident())
    ses.verify_email_identity(EmailAddress="forewarn@example.com")
    sink = EmailSink(ses, "forewarn@example.com", ["oncall@example.com"])
    before = ses.get_send_quota()["SentLast24Hours"]
    ref = sink.open(incident())
    sink.update(incident(), ref)
    sink.resolve(incident(), ref)
    assert ref["message_id"] and ses.get_send_quota()["SentLast24Hours"] == before + 3
    (sink_built,) = make_sinks("email", clients, None, None, email_from="forewarn@example.com", email_to="a@example.com, b@example.com")
    assert sink_built.recipients == ["a@example.com", "b@example.com"]
    with pytest.raises(ValueError, match="FOREWARN_EMAIL_FROM and FOREWARN_EMAIL_TO"):
        make_sinks("email", clients, None, None)


@pytest.mark.stack
def test_the_stack_serves_the_stand_ins_its_connections_point_the_sinks_at(aws_stack, monkeypatch):
    """`forewarn stack up` starts the PagerDuty and Slack stand-ins; the connections it prints
    (and `forewarn airflow` sets) reach them through the sinks' own code."""
    import requests

    from forewarn.local.stack import webhook_connections
    from forewarn.webhooks import pagerduty_sink, slack_sink

    for name, value in webhook_connections(aws_stack["port"]).items():
        monkeypatch.setenv(name, value)
    pagerduty, slack = pagerduty_sink("forewarn_pagerduty"), slack_sink("forewarn_slack")
    opened = incident("orders.count|2026-12-06T01:00")
    pagerduty.open(opened)
    slack.open(opened)
    alerts = requests.get(f"{aws_stack['webhooks_endpoint']}/pagerduty/alerts", timeout=10).json()
    messages = requests.get(f"{aws_stack['webhooks_endpoint']}/slack/messages", timeout=10).json()
    assert alerts[opened.token]["status"] == "triggered"
    assert any("orders.count" in json.dumps(m) for m in messages)
