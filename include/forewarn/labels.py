"""Operators' labels: what the people who answer the alerts say about an episode or a stretch of
a series, kept as one JSON object each under ``labels/`` (so any tool can write them).

    {"version": 1, "target": "orders.count|2026-11-27T10:00", "as": "not_anomaly",
     "from": null, "to": null, "note": "load test", "by": "alice", "created": "2026-11-27T11:02:00+00:00"}

``target`` is an episode (``series|first anomalous bucket``, as incidents name it) or a series;
``from``/``to`` (ISO 8601, optional) bound a series label in time. Kinds:

| kind          | means                                         | training                            |
|---------------|-----------------------------------------------|-------------------------------------|
| `real`        | a real anomaly                                | its buckets kept out (as unlabelled)|
| `not_anomaly` | a false alarm                                 | its buckets learnt                  |
| `expected`    | a true deviation that was planned (a batch)   | its buckets learnt                  |
| `new_normal`  | the level changed for good at ``from`` (or the episode's start) | the history before rebased to the new level |

A series label with ``real`` and a time range keeps that range out of training even where no
episode was recorded (an outage the detector missed).

An ``expected`` label may say the planned deviation **recurs** (``"recurs": "daily"`` or
``"weekly"``): a batch every Wednesday at 02:00, a nightly export. Training then keeps the
labelled span and its every recurrence out of the history (so the model's daily lags do not
carry a spike into the next day), and widens the forecast band over each recurrence ahead to
hold what its latest occurrence did: the next batch is expected, not alerted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from forewarn.config import Settings
from forewarn.events import is_series_name, utc_field
from forewarn.layout import LABELS_PREFIX

log = logging.getLogger(__name__)

KINDS = ("real", "not_anomaly", "expected", "new_normal")
#: How often an ``expected`` label's deviation may recur, in seconds.
RECURRENCES = {"daily": 86400, "weekly": 7 * 86400}
#: Kinds under which a labelled episode's buckets are learnt, not kept out.
LEARNT = frozenset({"not_anomaly", "expected"})
LABEL_VERSION = 1


class LabelError(ValueError):
    """A label that cannot be used; the message names the object and the field."""


@dataclass(frozen=True)
class Label:
    target: str
    kind: str
    start: datetime | None = None
    end: datetime | None = None
    note: str = ""
    by: str = ""
    created: datetime | None = None
    recurs: str | None = None  # "daily" or "weekly": an expected deviation that comes back

    @property
    def series(self) -> str:
        return self.target.split("|", 1)[0]

    @property
    def episode(self) -> str | None:
        return self.target if "|" in self.target else None

    def to_doc(self) -> dict[str, Any]:
        return {"version": LABEL_VERSION, "target": self.target, "as": self.kind,
                "from": self.start.isoformat() if self.start else None, "to": self.end.isoformat() if self.end else None,
                "note": self.note, "by": self.by, "created": (self.created or datetime.now(UTC)).isoformat(),
                **({"recurs": self.recurs} if self.recurs else {})}

    @property
    def key(self) -> str:
        """The same label written twice is one object (a rerun of a script changes nothing)."""
        ident = "|".join([self.target, self.kind, self.to_doc()["from"] or "", self.to_doc()["to"] or ""]
                         + ([self.recurs] if self.recurs else []))
        return f"{LABELS_PREFIX}{hashlib.sha256(ident.encode()).hexdigest()[:32]}.json"

    def covers(self, series: str, first: datetime, last: datetime, episode: str | None = None) -> bool:
        """Whether this label speaks of the span ``[first, last]`` of ``series`` (or of that episode)."""
        if self.episode is not None:
            return self.episode == episode
        if self.series != series:
            return False
        return (self.start is None or last >= self.start) and (self.end is None or first < self.end)


def _time(doc: dict[str, Any], field: str, where: str) -> datetime | None:
    return utc_field(doc, field, where, LabelError)


def parse_label(doc: Any, where: str = "label") -> Label:
    """A label from its JSON document; ``LabelError`` names the field that is wrong."""
    if not isinstance(doc, dict):
        raise LabelError(f"{where}: a label is a JSON object, not {type(doc).__name__}")
    target = doc.get("target")
    if not isinstance(target, str) or not target:
        raise LabelError(f"{where}: 'target' must be an episode (series|YYYY-MM-DDTHH:MM) or a series name")
    series = target.split("|", 1)[0]
    if not is_series_name(series):
        raise LabelError(f"{where}: 'target' names series {series!r}, which is not a series name ([A-Za-z0-9_.:/-]{{1,128}}, or a roll-up of one: name/key=value...)")
    kind = doc.get("as")
    if kind not in KINDS:
        raise LabelError(f"{where}: 'as' is {kind!r}; choose one of {', '.join(KINDS)}")
    start, end = _time(doc, "from", where), _time(doc, "to", where)
    if start and end and end <= start:
        raise LabelError(f"{where}: 'to' ({end.isoformat()}) is not after 'from' ({start.isoformat()})")
    if kind == "new_normal" and "|" not in target and start is None:
        raise LabelError(f"{where}: a new_normal label on a series needs 'from' (when the new level began)")
    recurs = doc.get("recurs") or None
    if recurs is not None:
        if recurs not in RECURRENCES:
            raise LabelError(f"{where}: 'recurs' is {recurs!r}; choose one of {', '.join(RECURRENCES)} (or leave it out)")
        if kind != "expected":
            raise LabelError(f"{where}: 'recurs' goes with 'as': 'expected' (a planned deviation that comes back), not {kind!r}")
        if "|" not in target and (start is None or end is None):
            raise LabelError(f"{where}: a recurring label on a series needs 'from' and 'to' (one occurrence)")
        if start and end and (end - start).total_seconds() >= RECURRENCES[recurs]:
            raise LabelError(f"{where}: a {recurs} recurrence must be shorter than a {'day' if recurs == 'daily' else 'week'} "
                             f"('from' {start.isoformat()} to 'to' {end.isoformat()} would keep the whole history out)")
    return Label(target=target, kind=kind, start=start, end=end, note=str(doc.get("note") or ""), by=str(doc.get("by") or ""),
                 created=_time(doc, "created", where), recurs=recurs)


def write_label(settings: Settings, s3: Any, label: Label) -> str:
    s3.put_object(Bucket=settings.bucket, Key=label.key, Body=json.dumps(label.to_doc(), sort_keys=True).encode(),
                  ContentType="application/json")
    return label.key


def read_labels(settings: Settings, s3: Any) -> tuple[list[Label], list[str]]:
    """Every label under ``labels/``, oldest first, and what was wrong with those that could not
    be used (logged, never fatal: one bad object must not stop training or a comparison)."""
    from forewarn.documents import read_documents

    labels, errors = read_documents(s3, settings.bucket, LABELS_PREFIX, parse_label, LabelError, "label")
    labels.sort(key=lambda lb: lb.created or datetime.min.replace(tzinfo=UTC))
    return labels, errors


def verdict(labels: list[Label], series: str, first: datetime, last: datetime, episode: str | None = None) -> Label | None:
    """The newest label that speaks of this span, if any."""
    found = [lb for lb in labels if lb.covers(series, first, last, episode)]
    return found[-1] if found else None


def weekly_precision(labels: list[Label], now: datetime, shard_of_series: Any = None) -> dict[str, tuple[int, int]]:
    """Per series, of the episodes that started in the week before ``now`` and that an operator
    labelled (by name; the newest label decides): how many were ``real`` and how many labelled
    in all (``new_normal`` counts as real: the level did change). ``shard_of_series``: keep only
    the series it accepts."""
    newest: dict[str, Label] = {}
    for label in labels:  # oldest first: a later label on the same episode wins
        if label.episode is not None:
            newest[label.episode] = label
    out: dict[str, list[int]] = {}
    for episode, label in newest.items():
        try:
            started = datetime.fromisoformat(episode.split("|", 1)[1]).replace(tzinfo=UTC)
        except ValueError:
            continue
        if not now - timedelta(days=7) <= started < now:
            continue
        if shard_of_series is not None and not shard_of_series(label.series):
            continue
        counts = out.setdefault(label.series, [0, 0])
        counts[0] += label.kind in ("real", "new_normal")
        counts[1] += 1
    return {series: (real, total) for series, (real, total) in sorted(out.items())}
