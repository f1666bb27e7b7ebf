"""The comparison's state between intervals: every detector's memory and the open episodes, one
object per interval end and state chain (``forewarn.layout``).

A run carries the state from the latest object at or before its interval's start, so a skipped
or failed interval never resets what the detectors learned or which episodes are open. Live runs
and backfills keep separate chains: a backfill reads the live chain where its own has nothing
newer, and never writes what a live run reads.

Version 3 (``.arrow``): an Arrow IPC file, zstd-compressed, one row per series and metric with
the detector's arrays (``forewarn.detect.Memory``) as columns, and the rest (episodes, the
ruled-out runs, the pipeline's own episode, moment, chain) as JSON in the schema's metadata. Per
series and metric it holds 2 x 500 recent deviations and 2 x 288 recent surprises (float32), 12
recent errors and the current count shortfall's run (float64, at most 288 pairs, stored at full
width), a day of the forecast's quality (2 x 288 float32; ``forewarn.quality``), the peaks of 62
past excursions with the bucket each ended at (float32, int64) and fifteen counters: 14,169 bytes before
compression at 5-minute buckets. A state written before a field existed reads with that
field empty. Version 2 (``.json.gz``) and 1 (plain JSON, no version)
still read; their pooled third view is dropped.
"""

from __future__ import annotations

import gzip
import io
import json
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa

from forewarn.config import Settings
from forewarn.detect import DetectorConfig, Memory
from forewarn.episodes import Episode, RuledOut
from forewarn.layout import MOMENT_FORMAT, legacy_state_keys, state_dir, state_key

#: Version of the state object. 1: JSON, no version field (until 2026-12); 2: gzipped JSON with
#: version, moment, chain; 3: Arrow IPC, the detector memory as arrays.
STATE_VERSION = 3

_META = b"forewarn"


@dataclass
class State:
    """What a comparison run carries on from: detector memory (row ``i``: ``keys[i]``, a
    ``series|metric``), open episodes by series, the document's other fields, and the open
    ruled-out runs by ``series|metric`` (none in a state written before they were kept)."""

    keys: list[str]
    memory: Memory
    episodes: dict[str, Episode]
    doc: dict[str, Any]
    ruled_out: dict[str, RuledOut] = field(default_factory=dict)

    def index(self) -> dict[str, int]:
        return {k: i for i, k in enumerate(self.keys)}


def encode_state(state: State) -> bytes:
    """The Arrow IPC bytes of ``state`` (the same bytes for the same state: a rerun rewrites
    the object it wrote)."""
    order = np.argsort(np.asarray(state.keys, dtype=object), kind="stable") if state.keys else np.array([], dtype=np.int64)
    memory = state.memory.take(order)
    columns: dict[str, pa.Array] = {"key": pa.array([state.keys[i] for i in order], pa.string())}
    for name, a in memory.arrays().items():
        width = int(np.prod(a.shape[1:])) if a.ndim > 1 else 0
        flat = pa.array(a.reshape(-1))
        columns[name] = pa.FixedSizeListArray.from_arrays(flat, width) if width else flat
    shapes = {name: list(a.shape[1:]) for name, a in memory.arrays().items()}
    doc = {"version": STATE_VERSION,
           **{k: v for k, v in state.doc.items() if k not in ("detectors", "episodes", "ruled_out", "version")},
           "shapes": shapes, "episodes": {k: state.episodes[k].__dict__ for k in sorted(state.episodes)},
           "ruled_out": {k: state.ruled_out[k].__dict__ for k in sorted(state.ruled_out)}}
    table = pa.table(columns).replace_schema_metadata({_META: msgspec.json.encode(doc, order="sorted")})
    sink = io.BytesIO()
    with pa.ipc.new_file(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression=pa.Codec("zstd", compression_level=1))) as w:
        w.write_table(table)
    return sink.getvalue()


def decode_state(body: bytes, cfg: DetectorConfig | None = None) -> State:
    """A state object's bytes, any version (JSON ones converted to the detector's arrays with
    ``cfg``'s sizes)."""
    if body[:6] == b"ARROW1":
        table = pa.ipc.open_file(pa.py_buffer(body)).read_all()
        doc = json.loads(table.schema.metadata[_META])
        n = table.num_rows
        arrays = {}
        for f in fields(Memory):
            if f.name not in table.column_names:  # written before the field existed: its empty value
                arrays[f.name] = getattr(Memory.empty(n, cfg), f.name)
                continue
            column = table.column(f.name).combine_chunks()
            shape = doc["shapes"][f.name]
            values = column.flatten() if shape else column
            arrays[f.name] = values.to_numpy(zero_copy_only=False).reshape(n, *shape).copy()
        known = {f.name for f in fields(Episode)}  # a field a newer build added is dropped, not fatal
        episodes = {k: Episode(**{f: x for f, x in v.items() if f in known}) for k, v in doc.pop("episodes").items()}
        known = {f.name for f in fields(RuledOut)}
        ruled_out = {k: RuledOut(**{f: x for f, x in v.items() if f in known}) for k, v in (doc.pop("ruled_out", None) or {}).items()}
        return State(table.column("key").to_pylist(), Memory(**arrays), episodes, doc, ruled_out)
    raw = gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body
    return state_from_json(msgspec.json.decode(raw), cfg)


def state_from_json(doc: dict[str, Any], cfg: DetectorConfig | None = None) -> State:
    """A version 1 or 2 document as a ``State``: each detector's views become rows of arrays."""
    cfg = cfg or DetectorConfig()
    keys = list(doc["detectors"])
    memory = Memory.empty(len(keys), cfg)
    m, e, w = memory.devs.shape[2], memory.surprises.shape[2], memory.errors.shape[1]
    for i, key in enumerate(keys):
        v = doc["detectors"][key]
        for view, name in enumerate(("forecast_view", "corrected_view")):
            arrivals = v[name]["arrivals"][-m:]
            memory.devs[i, view, np.arange(len(arrivals))] = arrivals
            surprises = v[name]["surprises"][-e:]
            memory.surprises[i, view, np.arange(len(surprises))] = surprises
        memory.dev_pos[i] = len(v["forecast_view"]["arrivals"][-m:])
        memory.sur_pos[i] = len(v["forecast_view"]["surprises"][-e:])
        errors = v["errors"][-w:]
        memory.errors[i, : len(errors)] = errors
        memory.err_pos[i] = len(errors)
        run = v.get("shortfall", [])[-e:]  # states written before runs short of the rate were kept start a new run
        if run:
            memory.run_rate[i, : len(run)], memory.run_seen[i, : len(run)] = zip(*run, strict=True)
        memory.run_len[i] = memory.run_pos[i] = len(run)
        memory.low[i] = np.inf if v["low"] is None else v["low"]
        memory.high[i] = -np.inf if v["high"] is None else v["high"]
        memory.seen[i], memory.scored[i] = v["seen"], v["scored"]
    # version 1 episodes were opened by the run that wrote them: they count as reported
    version = doc.get("version", 1)
    episodes = {k: Episode(**({"reported": True} if version < 2 else {}) | ep) for k, ep in doc["episodes"].items()}
    rest = {k: v for k, v in doc.items() if k not in ("detectors", "episodes")}
    return State(keys, memory, episodes, rest)


def write_state(settings: Settings, s3: Any, moment: datetime, state: State, chain: str = "live", shard: int | None = None) -> int:
    """The state after an interval. Returns the bytes written."""
    body = encode_state(state)
    s3.put_object(Bucket=settings.bucket, Key=state_key(settings, moment, chain, shard), Body=body,
                  ContentType="application/vnd.apache.arrow.file")
    return len(body)


def read_state(settings: Settings, s3: Any, moment: datetime, chain: str = "live", cfg: DetectorConfig | None = None,
               shard: int | None = None) -> State | None:
    """The state written for ``moment`` (None if there is none), in any version's format."""
    for key in (state_key(settings, moment, chain, shard), *legacy_state_keys(settings, moment, chain, shard)):
        try:
            body = s3.get_object(Bucket=settings.bucket, Key=key)["Body"].read()
        except s3.exceptions.NoSuchKey:
            continue
        return decode_state(body, cfg)
    return None


@dataclass(frozen=True)
class FoundState:
    moment: datetime
    chain: str
    state: State


def _moment_of(key: str) -> datetime | None:
    stem = key.rsplit("/", 1)[-1].split(".", 1)[0]
    try:
        return datetime.strptime(stem, MOMENT_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def latest_moment(settings: Settings, s3: Any, at: datetime, chain: str, within: timedelta,
                  shard: int | None = None) -> datetime | None:
    """The latest interval end at or before ``at`` (and no more than ``within`` before it) with
    a state in ``chain``: one listing a day, newest day first."""
    base = state_dir(settings, chain, shard)
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


def find_state(settings: Settings, s3: Any, at: datetime, chain: str, within: timedelta,
               cfg: DetectorConfig | None = None, shard: int | None = None) -> FoundState | None:
    """The state a run starting at ``at`` carries on from: its chain's object at ``at`` (the
    usual case, one read), else the latest one before it, no older than ``within``. A backfill
    takes the live chain's where that is newer than its own (the stretch it starts in ran live)."""
    chains = [chain] if chain == "live" else [chain, "live"]
    for name in chains:
        state = read_state(settings, s3, at, name, cfg, shard)
        if state is not None:
            return FoundState(at, name, state)
    best: tuple[datetime, str] | None = None
    for name in chains:
        moment = latest_moment(settings, s3, at, name, within, shard)
        if moment is not None and (best is None or moment > best[0]):
            best = (moment, name)
    if best is None:
        return None
    state = read_state(settings, s3, best[0], best[1], cfg, shard)
    return None if state is None else FoundState(best[0], best[1], state)
