"""Stand-ins for PagerDuty's Events API v2 and a Slack incoming webhook, on loopback.

Each accepts what the real service accepts and refuses, with the service's status and words,
what it refuses: PagerDuty a missing or malformed routing key, an unknown ``event_action``, a
trigger without a summary, source or known severity, a resolve without a ``dedup_key``, a
summary over 1,024 characters, a body over 512 KB; Slack a body that is not a JSON object, a
message with neither text nor blocks, blocks Slack would refuse (over 50, an unknown type, a
section's text over 3,000 characters), a webhook path it does not know. What they accepted is
readable as JSON: ``GET /pagerduty/alerts`` (each alert by ``dedup_key``: its status and
events) and ``GET /slack/messages``.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import datetime
from typing import Any

from werkzeug.wrappers import Request, Response

from forewarn.local.serve import LoopbackServer

PAGERDUTY_PATH = "/v2/enqueue"
#: The path of the stand-in's one Slack webhook (``/services/T…/B…/secret`` as Slack's are).
SLACK_PATH = "/services/T0FOREWARN/B0FOREWARN/standin0000000000000000"
#: The routing key the stack's connection gives the pagerduty sink (any 32 characters are accepted).
STANDIN_ROUTING_KEY = "f0ea1a7e5a2d4c0b9e8d7c6b5a4f3e2d"
SEVERITIES = ("critical", "error", "warning", "info")
BLOCK_TYPES = ("section", "context", "divider", "header", "actions", "image", "rich_text", "input", "file", "video")


def pagerduty_errors(body: Any) -> list[str]:
    """Why PagerDuty's Events API v2 would refuse this event (empty: it accepts it)."""
    if not isinstance(body, dict):
        return ["Event object must be a JSON object"]
    errors = []
    key = body.get("routing_key")
    if not isinstance(key, str) or len(key) != 32:
        errors.append("'routing_key' is missing or invalid: it must be a 32-character integration key")
    action = body.get("event_action")
    if action not in ("trigger", "acknowledge", "resolve"):
        errors.append("'event_action' is invalid (must be one of the following: 'trigger', 'acknowledge' or 'resolve')")
    dedup = body.get("dedup_key")
    if dedup is not None and (not isinstance(dedup, str) or not dedup or len(dedup) > 255):
        errors.append("'dedup_key' must be a non-empty string of at most 255 characters")
    if action in ("acknowledge", "resolve") and not dedup:
        errors.append(f"'dedup_key' is required for event_action '{action}'")
    if action == "trigger":
        payload = body.get("payload")
        if not isinstance(payload, dict):
            errors.append("'payload' is missing or not an object")
        else:
            summary = payload.get("summary")
            if not isinstance(summary, str) or not summary:
                errors.append("'payload.summary' is missing or blank")
            elif len(summary) > 1024:
                errors.append("'payload.summary' is longer than 1024 characters")
            if not isinstance(payload.get("source"), str) or not payload.get("source"):
                errors.append("'payload.source' is missing or blank")
            if payload.get("severity") not in SEVERITIES:
                errors.append("'payload.severity' is invalid (must be one of the following: 'critical', 'warning', 'error' or 'info')")
            stamp = payload.get("timestamp")
            if stamp is not None:
                try:
                    datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
                except ValueError:
                    errors.append("'payload.timestamp' is not a valid ISO 8601 timestamp")
            for name in ("component", "group", "class"):
                if name in payload and not isinstance(payload[name], str):
                    errors.append(f"'payload.{name}' must be a string")
            if "custom_details" in payload and not isinstance(payload["custom_details"], dict | str):
                errors.append("'payload.custom_details' must be an object")
        for link in body.get("links") or []:
            if not isinstance(link, dict) or not isinstance(link.get("href"), str) or not link["href"]:
                errors.append("'links' entries need an 'href'")
    return errors


def slack_error(body: Any) -> str | None:
    """Slack's error word for this incoming-webhook body (None: it posts it)."""
    if not isinstance(body, dict):
        return "invalid_payload"
    text, blocks = body.get("text"), body.get("blocks")
    if not (isinstance(text, str) and text.strip()) and not blocks and not body.get("attachments"):
        return "no_text"
    if text is not None and not isinstance(text, str):
        return "invalid_payload"
    if isinstance(text, str) and len(text) > 40000:
        return "msg_too_long"
    if blocks is not None:
        if not isinstance(blocks, list) or len(blocks) > 50:
            return "invalid_blocks"
        for block in blocks:
            if not isinstance(block, dict) or block.get("type") not in BLOCK_TYPES:
                return "invalid_blocks"
            inner = block.get("text")
            if block["type"] == "section":
                if not isinstance(inner, dict) or inner.get("type") not in ("mrkdwn", "plain_text") or not inner.get("text"):
                    if not block.get("fields"):
                        return "invalid_blocks"
                elif len(inner["text"]) > 3000:
                    return "invalid_blocks"
            if block["type"] == "context":
                elements = block.get("elements")
                if not isinstance(elements, list) or not 1 <= len(elements) <= 10:
                    return "invalid_blocks"
    return None


class Webhooks:
    """The WSGI app: both services' endpoints and what each accepted."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.alerts: dict[str, dict[str, Any]] = {}
        self.messages: list[dict[str, Any]] = []

    def __call__(self, environ: dict, start_response: Any) -> Any:
        return self.handle(Request(environ))(environ, start_response)

    def handle(self, request: Request) -> Response:
        if request.method == "GET" and request.path == "/pagerduty/alerts":
            with self.lock:
                return _json(200, self.alerts)
        if request.method == "GET" and request.path == "/slack/messages":
            with self.lock:
                return _json(200, self.messages)
        if request.method != "POST":
            return Response("method not allowed", status=405)
        raw = request.get_data()
        if request.path == PAGERDUTY_PATH:
            return self._pagerduty(raw)
        if request.path.startswith("/services/"):
            return self._slack(request.path, raw)
        return Response("no_service", status=404, content_type="text/plain")

    def _pagerduty(self, raw: bytes) -> Response:
        if len(raw) > 512 * 1024:
            return _json(413, {"status": "invalid event", "message": "Request entity too large (512 KB at most)"})
        try:
            body = json.loads(raw)
        except ValueError:
            return _json(400, {"status": "invalid request", "message": "Invalid JSON"})
        errors = pagerduty_errors(body)
        if errors:
            return _json(400, {"status": "invalid event", "message": "Event object is invalid", "errors": errors})
        dedup = body.get("dedup_key") or uuid.uuid4().hex
        with self.lock:
            alert = self.alerts.get(dedup)
            if body["event_action"] == "trigger":
                if alert is None or alert["status"] == "resolved":
                    alert = self.alerts[dedup] = {"status": "triggered", "events": []}
                alert["summary"] = body["payload"]["summary"]
                alert["severity"] = body["payload"]["severity"]
            elif alert is not None and alert["status"] != "resolved":  # an ack or resolve of no open alert is dropped, as PagerDuty does
                alert["status"] = "acknowledged" if body["event_action"] == "acknowledge" else "resolved"
            if alert is not None:
                alert["events"].append({"event_action": body["event_action"], "received": time.time()})
        return _json(202, {"status": "success", "message": "Event processed", "dedup_key": dedup})

    def _slack(self, path: str, raw: bytes) -> Response:
        if path != SLACK_PATH:
            return Response("no_service", status=404, content_type="text/plain")
        try:
            body = json.loads(raw)
        except ValueError:
            return Response("invalid_payload", status=400, content_type="text/plain")
        error = slack_error(body)
        if error:
            return Response(error, status=400, content_type="text/plain")
        with self.lock:
            self.messages.append(body)
        return Response("ok", status=200, content_type="text/plain")


def _json(status: int, body: Any) -> Response:
    return Response(json.dumps(body, sort_keys=True), status=status, content_type="application/json")


class WebhookServer(LoopbackServer):
    """The stand-ins on a loopback port (0: any free one), in a background thread."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1"):
        super().__init__(Webhooks(), "webhooks", port, host)

    @property
    def pagerduty_url(self) -> str:
        return self.endpoint + PAGERDUTY_PATH

    @property
    def slack_url(self) -> str:
        return self.endpoint + SLACK_PATH
