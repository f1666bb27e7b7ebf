"""The comparison's state between intervals: every detector's memory and the open episodes, one
gzipped JSON document per interval end and state chain (``forewarn.layout``).

A run carries the state from the latest document at or before its interval's start, so a
skipped or failed interval never resets what the detectors learned or which episodes are open.
Live runs and backfills keep separate chains: a backfill reads the live chain where its own has
nothing newer, and never writes what a live run reads.

Documents carry ``version``; documents written before it (plain JSON, no version) still read.
"""

from __future__ import annotations

import gzip
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import numpy as np

from forewarn.config import Settings
from forewarn.detect import SeriesState, View
from forewarn.episodes import Episode
from forewarn.layout import MOMENT_FORMAT, state_dir, state_key

#: Version of the state document. 1: no version field (until 2026-12); 2: version, moment, chain.
STATE_VERSION = 2

#: JSON with sorted keys and shortest round-trip floats, several times faster than the standard
#: library's (numpy scalars written as the floats they are).
_ENCODER = msgspec.json.Encoder(order="sorted", enc_hook=float)


def _view_to_json(view: View) -> dict[str, Any]:
    return {"arrivals": list(view.arrivals), "surprises": list(view.surprises)}


def _view_from_json(doc: dict[str, Any]) -> View:
    arrivals = deque(doc["arrivals"])
    return View(sorted_devs=sorted(arrivals), arrivals=arrivals, surprises=deque(doc["surprises"]))


def state_to_json(states: dict[str, SeriesState], episodes: dict[str, Episode], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The document for these detectors (by ``series|metric``) and episodes (by series);
    ``extra`` adds top-level fields (the pipeline's own health episode, the moment, the chain)."""
    out: dict[str, Any] = {}
    for key in sorted(states):
        d = states[key]
        out[key] = {
            "forecast_view": _view_to_json(d.forecast_view),
            "corrected_view": _view_to_json(d.corrected_view),
            "errors": list(d.errors),
            "low": None if not np.isfinite(d.low) else d.low,
            "high": None if not np.isfinite(d.high) else d.high,
            "seen": d.seen,
            "scored": d.scored,
            "recent_z": list(d.recent_z),
            "sustained_view": _view_to_json(d.sustained_view),
            "shortfall": [list(pair) for pair in d.shortfall],
        }
    return {"version": STATE_VERSION, **(extra or {}), "detectors": out,
            "episodes": {k: episodes[k].__dict__ for k in sorted(episodes)}}


def state_from_json(doc: dict[str, Any]) -> tuple[dict[str, SeriesState], dict[str, Episode]]:
    states = {}
    for key, v in doc["detectors"].items():
        states[key] = SeriesState(
            forecast_view=_view_from_json(v["forecast_view"]),
            corrected_view=_view_from_json(v["corrected_view"]),
            errors=deque(v["errors"]),
            low=np.inf if v["low"] is None else v["low"],
            high=-np.inf if v["high"] is None else v["high"],
            seen=v["seen"],
            scored=v["scored"],
            recent_z=deque(v["recent_z"]),
            sustained_view=_view_from_json(v["sustained_view"]),
            # states written before runs short of the rate were kept start a new run
            shortfall=deque(tuple(pair) for pair in v.get("shortfall", [])),
        )
    # version 1 episodes were opened by the run that wrote them: they count as reported
    version = doc.get("version", 1)
    episodes = {k: Episode(**({"reported": True} if version < 2 else {}) | v) for k, v in doc["episodes"].items()}
    return states, episodes


def write_state(settings: Settings, s3: Any, moment: datetime, doc: dict[str, Any], chain: str = "live") -> int:
    """The state after an interval, gzipped JSON (no timestamp in the gzip header, so a rerun
    writes the same bytes). Returns the bytes written."""
    body = gzip.compress(_ENCODER.encode(doc), compresslevel=1, mtime=0)
    s3.put_object(Bucket=settings.bucket, Key=state_key(settings, moment, chain), Body=body, ContentType="application/gzip")
    return len(body)


def read_state(settings: Settings, s3: Any, moment: datetime, chain: str = "live") -> dict[str, Any] | None:
    """The state written for ``moment`` (None if there is none), also as plain JSON as earlier
    versions wrote it."""
    key = state_key(settings, moment, chain)
    for candidate in (key, key.removesuffix(".gz")):
        try:
            body = s3.get_object(Bucket=settings.bucket, Key=candidate)["Body"].read()
        except s3.exceptions.NoSuchKey:
            continue
        return msgspec.json.decode(gzip.decompress(body) if candidate.endswith(".gz") else body)
    return None


@dataclass(frozen=True)
class FoundState:
    moment: datetime
    chain: str
    doc: dict[str, Any]


def _moment_of(key: str) -> datetime | None:
    stem = key.rsplit("/", 1)[-1].split(".", 1)[0]
    try:
        return datetime.strptime(stem, MOMENT_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def latest_moment(settings: Settings, s3: Any, at: datetime, chain: str, within: timedelta) -> datetime | None:
    """The latest interval end at or before ``at`` (and no more than ``within`` before it) with
    a state in ``chain``: one listing a day, newest day first."""
    base = state_dir(settings, chain)
    day = at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    oldest = at - within
    while day + timedelta(days=1) > oldest:
        found = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=settings.bucket, Prefix=f"{base}{day:%Y-%m-%d}"):
            for obj in page.get("Contents", []):
                moment = _moment_of(obj["Key"])
                if moment is not None and oldest <= moment <= at:
                    found.append(moment)
        if found:
            return max(found)
        day -= timedelta(days=1)
    return None


def find_state(settings: Settings, s3: Any, at: datetime, chain: str, within: timedelta) -> FoundState | None:
    """The state a run starting at ``at`` carries on from: its chain's document at ``at`` (the
    usual case, one read), else the latest one before it, no older than ``within``. A backfill
    takes the live chain's where that is newer than its own (the stretch it starts in ran live)."""
    chains = [chain] if chain == "live" else [chain, "live"]
    for name in chains:
        doc = read_state(settings, s3, at, name)
        if doc is not None:
            return FoundState(at, name, doc)
    best: tuple[datetime, str] | None = None
    for name in chains:
        moment = latest_moment(settings, s3, at, name, within)
        if moment is not None and (best is None or moment > best[0]):
            best = (moment, name)
    if best is None:
        return None
    doc = read_state(settings, s3, best[0], best[1])
    return None if doc is None else FoundState(best[0], best[1], doc)

