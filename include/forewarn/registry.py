"""The incident registry: what each sink was told of each episode, one JSON record per episode
(``incidents/<token>.json``), and a marker per episode still open (``incidents/open/<token>``).
It is the truth about what people were told: a retry or a rerun tells nobody twice, and every
live run reconciles its episodes with it.

Each sink call is recorded in two steps: the intent (``pending``) before the call, the result
after. A run that finds an intent without a result crashed in between, and cannot know whether
the call went through: sinks that deduplicate themselves (Incident Manager's clientToken,
OpsCenter's dedup string) are called again; the others (SNS) are not, so nobody is told twice,
and the record says the delivery is unconfirmed.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from forewarn.config import Settings
from forewarn.layout import INCIDENTS_PREFIX, OPEN_PREFIX, incident_key, open_marker_key
from forewarn.publish import Incident, IncidentSink

log = logging.getLogger(__name__)

#: Version of the record. 1: refs and revisions only; 2: also pending intents, per-sink resolution.
RECORD_VERSION = 2


class SinkFailed(RuntimeError):
    """One or more sinks failed; the rest of the run went on. The message names them."""


def read_record(settings: Settings, s3: Any, token: str) -> dict[str, Any]:
    try:
        return json.loads(s3.get_object(Bucket=settings.bucket, Key=incident_key(token))["Body"].read())
    except s3.exceptions.NoSuchKey:
        return {}


def _write(settings: Settings, s3: Any, token: str, record: dict[str, Any]) -> None:
    record["version"] = RECORD_VERSION
    s3.put_object(Bucket=settings.bucket, Key=incident_key(token), Body=json.dumps(record, sort_keys=True).encode())


def open_tokens(settings: Settings, s3: Any) -> dict[str, str]:
    """The episodes open in the sinks: token -> series (from the open markers)."""
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=settings.bucket, Prefix=OPEN_PREFIX):
        for obj in page.get("Contents", []):
            token = obj["Key"].removeprefix(OPEN_PREFIX)
            out[token] = s3.get_object(Bucket=settings.bucket, Key=obj["Key"])["Body"].read().decode()
    return out


def list_records(s3: Any, bucket: str) -> list[tuple[str, Any, dict[str, Any]]]:
    """Every record: (token, last modified, record), the open markers left out."""
    objects = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=INCIDENTS_PREFIX, Delimiter="/"):
        objects.extend(o for o in page.get("Contents", []) if o["Key"].endswith(".json"))
    return [(o["Key"].removeprefix(INCIDENTS_PREFIX).removesuffix(".json"), o["LastModified"],
             json.loads(s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read())) for o in objects]


def _call(settings: Settings, s3: Any, record: dict[str, Any], token: str, sink: IncidentSink, step: str, call: Any,
          failures: list[str]) -> tuple[str, Any]:
    """One sink call under the two-step rule: ("done", its result), ("unconfirmed", None) when an
    earlier run crashed during this very call of a sink that cannot deduplicate (it is not made
    again), or ("failed", None)."""
    pending = record.setdefault("pending", {})
    if pending.get(sink.name) == step and not getattr(sink, "deduplicates", False):
        log.warning("incident %s: %s to %s may not have gone through (a run crashed during it); not sent again",
                    token, step, sink.name)
        record.setdefault("unconfirmed", {})[sink.name] = step
        del pending[sink.name]
        return "unconfirmed", None
    pending[sink.name] = step
    _write(settings, s3, token, record)
    try:
        result = call()
    except Exception as err:  # noqa: BLE001 - one sink never stops the others; raised after the run
        del pending[sink.name]
        _write(settings, s3, token, record)
        log.error("incident %s: %s to %s failed: %r", token, step, sink.name, err)
        failures.append(f"{sink.name} {step}: {err!r}")
        return "failed", None
    del pending[sink.name]
    return "done", result


def open_incident(settings: Settings, s3: Any, sinks: list[IncidentSink], incident: Incident,
                  failures: list[str] | None = None) -> tuple[int, bool]:
    """Open the episode in every sink that does not hold it yet: (1 if any sink opened it now,
    whether every sink holds it). A failing sink is added to ``failures`` and skipped."""
    failures = [] if failures is None else failures
    token = incident.token
    record = read_record(settings, s3, token)
    if record.get("status") == "resolved":
        return 0, True
    record.setdefault("refs", {})
    record.update(episode=incident.episode, status="open", series=incident.series)
    record.setdefault("facts", incident.facts())
    new = 0
    for sink in sinks:
        if sink.name in record["refs"]:
            continue
        outcome, ref = _call(settings, s3, record, token, sink, "open", lambda sink=sink: sink.open(incident), failures)
        if outcome == "done":
            record["refs"][sink.name] = ref
            record["facts"] = incident.facts()
            new = 1
        elif outcome == "unconfirmed":
            record["refs"][sink.name] = {"unconfirmed": True}
        _write(settings, s3, token, record)
    complete = all(s.name in record["refs"] for s in sinks)
    if record["refs"]:
        s3.put_object(Bucket=settings.bucket, Key=open_marker_key(token), Body=incident.series.encode())
    return new, complete


def update_incident(settings: Settings, s3: Any, sinks: list[IncidentSink], incident: Incident,
                    failures: list[str] | None = None) -> int:
    """Report an update to every sink holding the episode that has not had this revision; 1 if
    any had it now. Recorded per sink, so a retry after a partial failure repeats nothing."""
    failures = [] if failures is None else failures
    token = incident.token
    record = read_record(settings, s3, token)
    if not record or record.get("status") == "resolved":
        return 0
    done = record.setdefault("revisions", {})
    new = False
    for sink in sinks:
        ref = record["refs"].get(sink.name)
        if ref is None or done.get(sink.name, 0) >= incident.revision:
            continue
        outcome, _ = _call(settings, s3, record, token, sink, f"update {incident.revision}",
                           lambda sink=sink, ref=ref: sink.update(incident, ref), failures)
        if outcome != "failed":
            done[sink.name] = incident.revision
            record["facts"] = incident.facts()
            new = new or outcome == "done"
        _write(settings, s3, token, record)
    return int(new)


def acknowledge_incident(settings: Settings, s3: Any, sinks: list[IncidentSink], incident: Incident,
                         failures: list[str] | None = None) -> int:
    """Tell every sink holding the episode that has not been told yet that someone is on it
    (``incident.acknowledgement``); 1 if any was told now. Recorded per sink, as updates are."""
    failures = [] if failures is None else failures
    token = incident.token
    record = read_record(settings, s3, token)
    if not record or record.get("status") == "resolved":
        return 0
    done = record.setdefault("acknowledged_in", [])
    new = False
    for sink in sinks:
        ref = record["refs"].get(sink.name)
        if ref is None or sink.name in done or not hasattr(sink, "acknowledge"):
            continue
        outcome, _ = _call(settings, s3, record, token, sink, "acknowledge",
                           lambda sink=sink, ref=ref: sink.acknowledge(incident, ref), failures)
        if outcome != "failed":
            done.append(sink.name)
            new = new or outcome == "done"
            record["acknowledged"] = incident.acknowledgement  # the page shows it once a sink has it
        _write(settings, s3, token, record)
    return int(new)


def resolve_incident(settings: Settings, s3: Any, sinks: list[IncidentSink], incident: Incident,
                     failures: list[str] | None = None, note: str | None = None) -> int:
    """Resolve the episode in every sink holding it that has not resolved it yet; once all
    have, the record is resolved and its open marker removed. 1 if it is resolved now.

    The decision is recorded first (``resolving``: when it ended, and the note): the run's state
    no longer holds the episode, so a run that finds the record still open after a failed or
    interrupted resolve finishes it (``finish_resolving``) rather than taking it up again."""
    failures = [] if failures is None else failures
    token = incident.token
    record = read_record(settings, s3, token)
    if not record or record.get("status") == "resolved":
        return 0
    if "resolving" not in record:
        record["resolving"] = {"ended": incident.ended.isoformat() if incident.ended else None, "note": note}
        _write(settings, s3, token, record)
    resolved = record.setdefault("resolved_in", [])
    for sink in sinks:
        ref = record["refs"].get(sink.name)
        if ref is None or sink.name in resolved:
            continue
        outcome, _ = _call(settings, s3, record, token, sink, "resolve", lambda sink=sink, ref=ref: sink.resolve(incident, ref), failures)
        if outcome != "failed":
            resolved.append(sink.name)
        _write(settings, s3, token, record)
    if any(s.name in record["refs"] and s.name not in resolved for s in sinks):
        return 0
    record.update(status="resolved", ended=incident.ended.isoformat() if incident.ended else None)
    if note:
        record["note"] = note
    _write(settings, s3, token, record)
    s3.delete_object(Bucket=settings.bucket, Key=open_marker_key(token))
    return 1
