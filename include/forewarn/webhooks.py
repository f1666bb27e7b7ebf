"""Incident sinks over HTTPS: PagerDuty (Events API v2) and Slack (an incoming webhook).

Each takes its secret from an Airflow connection (``connection_fields``): the PagerDuty
integration's routing key, the Slack webhook's URL. A connection's ``host`` may name another
endpoint (the embedded stack's stand-in on loopback, ``forewarn.local.webhooks``). Throttling
(429) and server errors are retried with backoff; a request the service refuses (400) raises
with the service's own reasons, since sending it again cannot help.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

import requests

from forewarn.publish import Incident

PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
#: Incident Manager impact (1 critical .. 5 none) as a PagerDuty severity.
PAGERDUTY_SEVERITY = {1: "critical", 2: "error", 3: "warning", 4: "info", 5: "info"}
RETRIES = 4


class SinkRefused(ValueError):
    """The service refused the request as malformed or unauthorised: say why, do not retry."""


def connection_fields(conn_id: str, environ: dict[str, str] | None = None) -> dict[str, Any]:
    """An Airflow connection's ``host``, ``login``, ``password`` and ``extra``: from its
    ``AIRFLOW_CONN_<ID>`` variable (JSON or URI form) when set, else from Airflow (secrets
    backends included). Raises a ``LookupError`` that says what to create."""
    env = os.environ if environ is None else environ
    raw = env.get(f"AIRFLOW_CONN_{conn_id.upper()}")
    if raw:
        if raw.lstrip().startswith("{"):
            conn = json.loads(raw)
            extra = conn.get("extra") or {}
            return {"host": conn.get("host") or "", "login": conn.get("login") or "", "password": conn.get("password") or "",
                    "extra": json.loads(extra) if isinstance(extra, str) else extra}
        from urllib.parse import unquote, urlsplit

        parts = urlsplit(raw)
        scheme = parts.scheme if parts.scheme in ("http", "https") else "https"
        host = f"{scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}" if parts.hostname else ""
        return {"host": host, "login": unquote(parts.username or ""), "password": unquote(parts.password or ""), "extra": {}}
    try:
        from airflow.sdk import Connection

        conn = Connection.get(conn_id)
    except Exception as err:  # noqa: BLE001 - any lookup failure means the same thing to the operator
        raise LookupError(f"no Airflow connection {conn_id!r}: create it (Admin > Connections, a secrets backend, "
                          f"or AIRFLOW_CONN_{conn_id.upper()}) with the secret in its password ({err})") from None
    host = conn.host or ""
    if host and not host.startswith("http"):  # host, port and schema stored apart
        host = f"https://{host}{f':{conn.port}' if conn.port else ''}{('/' + conn.schema.lstrip('/')) if conn.schema else ''}"
    return {"host": host, "login": conn.login or "", "password": conn.password or "", "extra": conn.extra_dejson or {}}


def post_json(url: str, body: dict[str, Any], ok: tuple[int, ...], session: Any = None,
              idempotent: bool = True) -> requests.Response:
    """POST ``body`` as JSON; retry throttling and server errors with exponential backoff (a
    service that does not deduplicate, ``idempotent=False``: only throttling and failures to
    connect, since a slow answer may still have been delivered). Errors name the service by
    scheme and host only: a webhook URL's path is its secret."""
    from urllib.parse import urlsplit

    http = session or requests
    parts = urlsplit(url)
    where = f"{parts.scheme}://{parts.netloc}"
    for attempt in range(RETRIES):
        try:
            response = http.post(url, json=body, timeout=10)
        except requests.RequestException as err:
            delivered_maybe = not isinstance(err, requests.ConnectionError)  # a read timeout: it may have arrived
            if attempt == RETRIES - 1 or (delivered_maybe and not idempotent):
                raise ConnectionError(f"{where} did not answer after {RETRIES} tries ({type(err).__name__})") from None
        else:
            if response.status_code in ok:
                return response
            if response.status_code != 429 and response.status_code < 500:
                raise SinkRefused(f"{where} refused the request ({response.status_code}): {response.text[:500]}")
            if attempt == RETRIES - 1 or (response.status_code != 429 and not idempotent):
                raise ConnectionError(f"{where} answered {response.status_code} to {attempt + 1} tries: {response.text[:200]}")
        time.sleep(min(0.5 * 2**attempt, 8))
    raise AssertionError("unreachable")


@dataclass
class PagerDutySink:
    """PagerDuty Events API v2: a ``trigger`` keyed by the episode token (``dedup_key``), so a
    retried or repeated trigger joins the same alert; updates trigger again with the new
    summary; recovery sends ``resolve``."""

    routing_key: str
    url: str = PAGERDUTY_EVENTS_URL
    session: Any = None
    name: str = "pagerduty"
    deduplicates: bool = True  # the dedup_key

    def _event(self, incident: Incident, action: str) -> dict[str, Any]:
        body: dict[str, Any] = {"routing_key": self.routing_key, "event_action": action, "dedup_key": incident.token}
        if action == "trigger":
            body["payload"] = {
                "summary": incident.title[:1024],
                "source": "forewarn",
                "severity": PAGERDUTY_SEVERITY.get(incident.impact, "warning"),
                "timestamp": incident.started.isoformat(),
                "component": incident.series[:255],
                "group": incident.metric[:255],
                "class": f"{incident.metric} {incident.direction} forecast"[:255],
                "custom_details": {**incident.facts(), "summary": incident.summary, "changes": incident.changes},
            }
            body["client"] = "forewarn"
            if incident.dashboard_url and incident.dashboard_url.startswith("http"):
                body["links"] = [{"href": incident.dashboard_url, "text": "CloudWatch dashboard"}]
        return body

    def _send(self, incident: Incident, action: str) -> dict[str, Any]:
        return post_json(self.url, self._event(incident, action), (202,), self.session).json()

    def open(self, incident: Incident) -> dict[str, Any]:
        return {"dedup_key": self._send(incident, "trigger").get("dedup_key", incident.token)}

    def update(self, incident: Incident, ref: dict[str, Any]) -> None:
        self._send(incident, "trigger")

    def acknowledge(self, incident: Incident, ref: dict[str, Any]) -> None:
        """PagerDuty's own acknowledgement of the alert (escalation stops)."""
        self._send(incident, "acknowledge")

    def resolve(self, incident: Incident, ref: dict[str, Any]) -> None:
        self._send(incident, "resolve")


@dataclass
class SlackSink:
    """A Slack incoming webhook: a message when an episode opens, changes and ends."""

    webhook_url: str
    session: Any = None
    name: str = "slack"
    deduplicates: bool = False  # every post is a message

    def _post(self, incident: Incident, headline: str, detail: str) -> None:
        title, detail, episode = (slack_escape(x) for x in (incident.title, detail, incident.episode))
        text = f"{headline}: {title}"
        blocks = [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{headline}*\n{title}"[:3000]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": detail[:3000]}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": f"episode `{episode}` · impact {incident.impact}"[:3000]}]},
        ]
        post_json(self.webhook_url, {"text": text[:4000], "blocks": blocks}, (200,), self.session, idempotent=False)

    def open(self, incident: Incident) -> dict[str, Any]:
        self._post(incident, ":rotating_light: forewarn incident", incident.summary)
        return {"posted": True}

    def update(self, incident: Incident, ref: dict[str, Any]) -> None:
        self._post(incident, ":arrow_up: forewarn incident updated", "\n".join(incident.changes) or incident.summary)

    def acknowledge(self, incident: Incident, ref: dict[str, Any]) -> None:
        self._post(incident, ":eyes: forewarn incident acknowledged", incident.acknowledgement or "acknowledged")

    def resolve(self, incident: Incident, ref: dict[str, Any]) -> None:
        note = f"\nResolved: {incident.resolution}" if incident.resolution else ""
        self._post(incident, ":white_check_mark: forewarn incident resolved", incident.summary + note)


def slack_escape(text: str) -> str:
    """Text as Slack shows it literally: a series name cannot become a mention or a link."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def pagerduty_sink(conn_id: str) -> PagerDutySink:
    """The PagerDuty sink of an Airflow connection: the routing key in its password, an
    endpoint of its own in ``host`` (optional)."""
    conn = connection_fields(conn_id)
    if not conn["password"]:
        raise ValueError(f"the pagerduty sink needs the integration's routing key in the password of connection {conn_id!r}")
    return PagerDutySink(conn["password"], conn["host"] or PAGERDUTY_EVENTS_URL)


def slack_sink(conn_id: str) -> SlackSink:
    """The Slack sink of an Airflow connection: the incoming webhook's URL in its password."""
    conn = connection_fields(conn_id)
    url = conn["password"] or conn["host"]
    if not url.startswith("http"):
        raise ValueError(f"the slack sink needs the incoming webhook's URL (https://hooks.slack.com/services/...) in the "
                         f"password of connection {conn_id!r}")
    return SlackSink(url)
