"""Acknowledgements: someone is on an open incident. One JSON object per episode under
``acks/`` (so any tool can write one), or ``forewarn ack``:

    {"version": 1, "episode": "orders.count|2026-12-06T02:45", "by": "alice", "note": "on it",
     "created": "2026-12-06T03:01:00+00:00"}

The next live comparison tells every sink holding the incident once (PagerDuty acknowledges
the alert, so escalation stops; OpsCenter sets the OpsItem InProgress; Incident Manager adds a
timeline event; SNS publishes ``incident.acknowledged``; Slack and email say so), and from then
on the incident sends no updates; its resolution still goes out.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from forewarn.config import Settings
from forewarn.events import is_series_name, utc_field
from forewarn.layout import ACKS_PREFIX

ACK_VERSION = 1


class AckError(ValueError):
    """An acknowledgement that cannot be used; the message names the object and the field."""


@dataclass(frozen=True)
class Ack:
    episode: str
    by: str = ""
    note: str = ""
    created: datetime | None = None

    @property
    def text(self) -> str:
        return f"acknowledged by {self.by or 'someone'}" + (f": {self.note}" if self.note else "")

    @property
    def key(self) -> str:
        """One object per episode: a second acknowledgement replaces the first."""
        return f"{ACKS_PREFIX}{hashlib.sha256(self.episode.encode()).hexdigest()[:32]}.json"

    def to_doc(self) -> dict[str, Any]:
        return {"version": ACK_VERSION, "episode": self.episode, "by": self.by, "note": self.note,
                "created": (self.created or datetime.now(UTC)).isoformat()}


def parse_ack(doc: Any, where: str = "acknowledgement") -> Ack:
    if not isinstance(doc, dict):
        raise AckError(f"{where}: an acknowledgement is a JSON object, not {type(doc).__name__}")
    episode = doc.get("episode")
    if not isinstance(episode, str) or "|" not in episode or not is_series_name(episode.split("|", 1)[0]):
        raise AckError(f"{where}: 'episode' must be an episode as incidents name it (series|YYYY-MM-DDTHH:MM), not {episode!r}")
    return Ack(episode=episode, by=str(doc.get("by") or ""), note=str(doc.get("note") or "")[:1000],
               created=utc_field(doc, "created", where, AckError))


def write_ack(settings: Settings, s3: Any, ack: Ack) -> str:
    s3.put_object(Bucket=settings.bucket, Key=ack.key, Body=json.dumps(ack.to_doc(), sort_keys=True).encode(),
                  ContentType="application/json")
    return ack.key


def read_acks(settings: Settings, s3: Any) -> tuple[dict[str, Ack], list[str]]:
    """Every acknowledgement by episode, and what was wrong with those that could not be used."""
    from forewarn.documents import read_documents

    acks, errors = read_documents(s3, settings.bucket, ACKS_PREFIX, parse_ack, AckError, "acknowledgement")
    return {a.episode: a for a in acks}, errors
