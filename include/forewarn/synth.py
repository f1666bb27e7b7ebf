"""Synthetic multi-series events with daily and weekly seasonality, and the anomalies and data
faults of a scenario file. Pure numpy/pandas: the producer and the bulk loader send what this makes.

A *plan* is a DataFrame with one row per line that will land:

``event_id, series, event_epoch, value, arrival_epoch, line, expected_reason, copy``

``expected_reason`` is what the aggregation must say of the line (``None`` for a good event,
judged with the look-back given), ``copy`` is 0 for an original and 1 for a duplicate send.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from forewarn.events import DIMENSION_KEY, DIMENSION_VALUE, is_valid_series

DAY = 86400.0
WEEK = 7 * DAY


@dataclass(frozen=True)
class SeriesSpec:
    """One synthetic metric.

    ``kind='count'``: events arrive as a Poisson process at ``rate`` per minute (times the season);
    each carries a value (an amount). ``kind='gauge'``: one reading every ``period_s`` seconds
    whose value follows the season."""

    name: str
    kind: str = "count"
    rate: float = 5.0
    daily_amplitude: float = 0.5
    weekly_amplitude: float = 0.2
    value_mean: float = 50.0
    value_sd: float = 10.0
    period_s: float = 60.0
    peak_hour: float = 14.0
    #: For counts: each event's ``dimensions``, drawn by share, e.g. ``{"region": {"eu": 0.6,
    #: "us": 0.4}}`` (each key's shares add up to 1; the keys independent of one another).
    dimensions: dict | None = None

    def combinations(self) -> list[tuple[dict[str, str], float]]:
        """Every combination of dimension values with its share of the events (one, empty,
        without dimensions)."""
        combos: list[tuple[dict[str, str], float]] = [({}, 1.0)]
        for key, shares in (self.dimensions or {}).items():
            combos = [({**values, key: value}, share * s) for values, share in combos for value, s in shares.items()]
        return combos

    def season(self, epoch: np.ndarray) -> np.ndarray:
        """Multiplicative season around 1: daily peak at ``peak_hour`` UTC, weekdays busier."""
        day_phase = 2 * np.pi * ((epoch % DAY) / DAY - self.peak_hour / 24.0)
        # 1970-01-01 was a Thursday; day 0 = Monday after shifting by 3 days.
        weekday = ((epoch // DAY) + 3) % 7
        weekly = np.where(weekday >= 5, 1 - self.weekly_amplitude, 1 + self.weekly_amplitude * 0.4)
        return (1 + self.daily_amplitude * np.cos(day_phase)) * weekly


@dataclass(frozen=True)
class Anomaly:
    """An injected deviation on one series over ``[start, start + duration)`` (epoch seconds).

    kinds: ``spike`` and ``drop`` scale a count's rate or push a gauge's value by ``magnitude``
    standard deviations (drop: rate times ``magnitude``); ``level_shift`` scales the level by
    ``magnitude``; ``drift`` ramps the level linearly to ``magnitude`` times by the end;
    ``missing`` sends nothing."""

    kind: str
    series: str
    start: float
    duration: float
    magnitude: float = 1.0
    #: Only the events with these dimension values (a count's), e.g. ``{"region": "eu"}``.
    where: dict | None = None

    def applies(self, values: dict[str, str]) -> bool:
        return all(values.get(k) == v for k, v in (self.where or {}).items())

    KINDS = ("spike", "drop", "level_shift", "drift", "missing")

    def __post_init__(self) -> None:
        if self.kind not in self.KINDS:
            raise ValueError(f"unknown anomaly kind {self.kind!r}; use one of {', '.join(self.KINDS)}")
        if self.duration <= 0:
            raise ValueError("an anomaly's duration must be positive")

    @property
    def end(self) -> float:
        return self.start + self.duration


@dataclass(frozen=True)
class Quality:
    """Data faults: shares of events sent twice, sent late (by up to ``late_max_s``), sent very
    late (beyond the look-back), and extra malformed lines."""

    duplicate_rate: float = 0.0
    late_rate: float = 0.0
    late_max_s: float = 2400.0
    very_late_rate: float = 0.0
    malformed_rate: float = 0.0


@dataclass
class Scenario:
    series: list[SeriesSpec]
    anomalies: list[Anomaly] = field(default_factory=list)
    quality: Quality = field(default_factory=Quality)
    seed: int = 7
    #: The roll-ups the scenario's dimensions are meant for (``FOREWARN_ROLLUPS``).
    rollups: str = ""


def load_scenario(path: str | Path | None = None, live_start: float = 0.0) -> Scenario:
    """Read a scenario YAML (the shipped ``demo.yaml`` when no path). Anomaly ``start`` is given in
    minutes after ``live_start``; ``duration`` in minutes."""
    if path is None:
        text = resources.files("forewarn.scenarios").joinpath("demo.yaml").read_text()
    else:
        text = Path(path).read_text()
    doc = yaml.safe_load(text) or {}
    series = [SeriesSpec(**s) for s in doc.get("series", [])]
    names = {s.name for s in series}
    for s in series:
        if not is_valid_series(s.name):
            raise ValueError(f"series name {s.name!r} is not a valid series name ([A-Za-z0-9_.:/-]{{1,128}})")
    anomalies = []
    for a in doc.get("anomalies", []):
        if a["series"] not in names:
            raise ValueError(f"anomaly on unknown series {a['series']!r}; scenario series: {', '.join(sorted(names))}")
        anomalies.append(
            Anomaly(
                kind=a["kind"],
                series=a["series"],
                start=live_start + 60.0 * float(a["start_min"]),
                duration=60.0 * float(a["duration_min"]),
                magnitude=float(a.get("magnitude", 1.0)),
                where=a.get("where") or None,
            )
        )
    for s in series:
        for key, shares in (s.dimensions or {}).items():
            if not DIMENSION_KEY.fullmatch(str(key)) or not all(DIMENSION_VALUE.fullmatch(str(v)) for v in shares) \
                    or abs(sum(shares.values()) - 1) > 1e-9:
                raise ValueError(f"series {s.name}: dimension {key!r} needs values [A-Za-z0-9_.:-] whose shares add up to 1, "
                                 f"got {shares!r}")
    return Scenario(series=series, anomalies=anomalies, quality=Quality(**doc.get("quality", {})), seed=int(doc.get("seed", 7)),
                    rollups=str(doc.get("rollups") or ""))


def _event_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    words = rng.integers(0, 2**63, size=(n, 2), dtype=np.int64)
    return np.char.add(np.char.mod("%016x", words[:, 0]), np.char.mod("%016x", words[:, 1]))


def _iso(epochs: np.ndarray) -> np.ndarray:
    ms = np.round(epochs * 1000).astype("int64")
    text = pd.to_datetime(ms, unit="ms", utc=True).strftime("%Y-%m-%dT%H:%M:%S.%f").to_numpy(dtype=str)
    return np.char.add(np.char.ljust(text, 23).astype("<U23"), "Z")


def generate_events(scenario: Scenario, start: float, end: float, seed_offset: int = 0) -> pd.DataFrame:
    """Good events of every series with event time in ``[start, end)``, anomalies applied."""
    rng = np.random.default_rng([scenario.seed, seed_offset, int(start)])
    frames = []
    for spec in scenario.series:
        mine = [a for a in scenario.anomalies if a.series == spec.name]
        if spec.kind == "count":
            minutes = np.arange(np.floor(start / 60) * 60, end, 60.0)
            parts_t, parts_dims = [], []
            for values_of, share in spec.combinations():
                rate = spec.rate * share * spec.season(minutes + 30)
                rate = _apply_rate(rate, minutes + 30, [a for a in mine if a.applies(values_of)])
                counts = rng.poisson(np.clip(rate, 0, None))
                parts_t.append(np.repeat(minutes, counts) + rng.uniform(0, 60, counts.sum()))
                text = json.dumps(values_of, separators=(",", ":"), sort_keys=True) if values_of else None
                parts_dims.append(np.full(counts.sum(), text, dtype=object))
            t, dims = np.concatenate(parts_t), np.concatenate(parts_dims)
            values = rng.lognormal(np.log(spec.value_mean), spec.value_sd / max(spec.value_mean, 1e-9), t.size)
        else:
            t = np.arange(np.ceil(start / spec.period_s) * spec.period_s, end, spec.period_s)
            t = t + rng.uniform(0, min(1.0, spec.period_s / 10), t.size)
            level = spec.value_mean * spec.season(t)
            values = _apply_value(level, t, mine, spec.value_sd) + rng.normal(0, spec.value_sd, t.size)
            present = _not_missing(t, mine)
            t, values = t[present], values[present]
            dims = np.full(t.size, None, dtype=object)
        keep = (t >= start) & (t < end)
        t = np.round(t[keep], 3)
        frames.append(pd.DataFrame({"series": spec.name, "event_epoch": t, "value": np.round(values[keep], 4), "dimensions": dims[keep]}))
    events = (pd.concat(frames, ignore_index=True) if frames
              else pd.DataFrame(columns=["series", "event_epoch", "value", "dimensions"]))
    events.insert(0, "event_id", _event_ids(rng, len(events)))
    return events.sort_values(["event_epoch", "series"], kind="stable").reset_index(drop=True)


def _apply_rate(rate: np.ndarray, t: np.ndarray, anomalies: list[Anomaly]) -> np.ndarray:
    rate = rate.copy()
    for a in anomalies:
        inside = (t >= a.start) & (t < a.end)
        if a.kind in ("spike", "drop", "level_shift"):
            rate[inside] *= a.magnitude
        elif a.kind == "drift":
            rate[inside] *= 1 + (a.magnitude - 1) * (t[inside] - a.start) / a.duration
        elif a.kind == "missing":
            rate[inside] = 0.0
    return rate


def _apply_value(level: np.ndarray, t: np.ndarray, anomalies: list[Anomaly], sd: float) -> np.ndarray:
    level = level.copy()
    for a in anomalies:
        inside = (t >= a.start) & (t < a.end)
        if a.kind == "spike":
            level[inside] += a.magnitude * sd
        elif a.kind == "drop":
            level[inside] -= a.magnitude * sd
        elif a.kind == "level_shift":
            level[inside] *= a.magnitude
        elif a.kind == "drift":
            level[inside] *= 1 + (a.magnitude - 1) * (t[inside] - a.start) / a.duration
    return level


def _not_missing(t: np.ndarray, anomalies: list[Anomaly]) -> np.ndarray:
    keep = np.ones(t.size, dtype=bool)
    for a in anomalies:
        if a.kind == "missing":
            keep &= ~((t >= a.start) & (t < a.end))
    return keep


MALFORMED_KINDS = (
    ("invalid_json", lambda r, eid, s, ts: '{"event_id": "' + eid + '", "series": "' + s + '", "value": '),
    ("missing_event_id", lambda r, eid, s, ts: json.dumps({"series": s, "event_time": ts, "value": 1.0})),
    ("bad_series", lambda r, eid, s, ts: json.dumps({"event_id": eid, "series": "bad series!", "event_time": ts, "value": 1.0})),
    ("bad_event_time", lambda r, eid, s, ts: json.dumps({"event_id": eid, "series": s, "event_time": "yesterday", "value": 1.0})),
    ("bad_value", lambda r, eid, s, ts: json.dumps({"event_id": eid, "series": s, "event_time": ts, "value": "n/a"})),
)


def plan_landing(
    scenario: Scenario, start: float, end: float, lookback_hours: int, seed_offset: int = 0, send_at: float | None = None
) -> pd.DataFrame:
    """Every line to land for events in ``[start, end)``, with its arrival time and the verdict the
    aggregation must reach. With ``send_at``, everything arrives then (a live send); otherwise each
    line arrives at its event time (plus its delay, when late)."""
    events = generate_events(scenario, start, end, seed_offset)
    rng = np.random.default_rng([scenario.seed, seed_offset, int(start), 1])
    q = scenario.quality
    n = len(events)
    delay = np.zeros(n)
    late = rng.random(n) < q.late_rate
    delay[late] = rng.uniform(60, q.late_max_s, late.sum())
    very_late = (rng.random(n) < q.very_late_rate) & ~late
    delay[very_late] = rng.uniform((lookback_hours + 1) * 3600, (lookback_hours + 3) * 3600, very_late.sum())
    if send_at is None:  # nothing lands after the stretch ends
        arrival = np.minimum(events["event_epoch"].to_numpy() + delay, end - 0.001)
    else:
        arrival = np.full(n, float(send_at))
    lines = np.char.add(
        np.char.add(np.char.add('{"event_id":"', events["event_id"].to_numpy(dtype=str)), '","series":"'),
        events["series"].to_numpy(dtype=str),
    )
    lines = np.char.add(np.char.add(lines, '","event_time":"'), _iso(events["event_epoch"].to_numpy()))
    lines = np.char.add(np.char.add(lines, '","value":'), np.array([repr(float(v)) for v in events["value"].to_numpy()], dtype=str))
    dims = events["dimensions"].to_numpy(dtype=object) if "dimensions" in events else np.full(n, None, dtype=object)
    with_dims = np.array([d is not None for d in dims], dtype=bool)
    if with_dims.any():
        suffix = np.array([',"dimensions":' + d if d is not None else "" for d in dims], dtype=str)
        lines = np.char.add(lines, suffix)
    lines = np.char.add(lines, "}")
    plan = events.assign(arrival_epoch=arrival, line=lines, copy=0)
    plan["expected_reason"] = _time_verdict(plan["event_epoch"].to_numpy(), arrival, lookback_hours)

    dup = rng.random(n) < q.duplicate_rate
    copies = plan[dup].copy()
    copies["copy"] = 1
    if send_at is None:  # a retried send lands a little after the original
        copies["arrival_epoch"] = np.minimum(copies["arrival_epoch"] + rng.uniform(1, 300, len(copies)), end - 0.001)
    copies["expected_reason"] = _time_verdict(copies["event_epoch"].to_numpy(), copies["arrival_epoch"].to_numpy(), lookback_hours)

    n_bad = rng.binomial(n, q.malformed_rate) if n else 0
    bad_rows = []
    if n_bad:
        pick = rng.integers(0, n, n_bad)
        kinds = rng.integers(0, len(MALFORMED_KINDS), n_bad)
        ids = _event_ids(rng, n_bad)
        for i, (row, kind) in enumerate(zip(pick, kinds, strict=True)):
            reason, make = MALFORMED_KINDS[kind]
            ev = events.iloc[row]
            ts = _iso(np.array([ev.event_epoch]))[0]
            bad_rows.append(
                {
                    "event_id": ids[i],
                    "series": ev.series,
                    "event_epoch": ev.event_epoch,
                    "value": np.nan,
                    "arrival_epoch": arrival[row],
                    "line": make(rng, ids[i], ev.series, ts),
                    "copy": 0,
                    "expected_reason": reason,
                }
            )
    parts = [plan, copies]
    if bad_rows:
        parts.append(pd.DataFrame(bad_rows))
    out = pd.concat(parts, ignore_index=True)
    out["expected_reason"] = out["expected_reason"].astype(object).where(out["expected_reason"].notna(), None)
    return out.sort_values(["arrival_epoch", "event_id", "copy"], kind="stable").reset_index(drop=True)


def _time_verdict(event_epoch: np.ndarray, arrival_epoch: np.ndarray, lookback_hours: int) -> np.ndarray:
    arrival_hour = np.floor(arrival_epoch / 3600) * 3600
    verdict = np.full(event_epoch.size, None, dtype=object)
    verdict[event_epoch < arrival_hour - lookback_hours * 3600] = "too_late"
    verdict[event_epoch >= arrival_hour + 7200] = "future_event_time"
    return verdict


def expected_totals(plan: pd.DataFrame, out_start: float, out_end: float) -> pd.DataFrame:
    """Per series, what the aggregates over ``[out_start, out_end)`` must hold: distinct good events,
    duplicate copies, and the value sum."""
    good = plan[plan["expected_reason"].isna() & (plan["event_epoch"] >= out_start) & (plan["event_epoch"] < out_end)]
    unique = good.drop_duplicates("event_id")
    totals = unique.groupby("series").agg(events=("event_id", "size"), value_sum=("value", "sum"))
    totals["duplicates"] = good.groupby("series").size().reindex(totals.index, fill_value=0) - totals["events"]
    return totals.reset_index()


def replay_csv(path: str | Path, series: str, shift_to: float | None = None) -> pd.DataFrame:
    """Events of ``series`` from a ``timestamp,value`` CSV (the NAB layout), one per row. With
    ``shift_to``, timestamps are moved so the last row happens at that epoch."""
    if not is_valid_series(series):
        raise ValueError(f"series name {series!r} is not valid: use [A-Za-z0-9_.:/-]{{1,128}}")
    frame = pd.read_csv(path)
    missing = {"timestamp", "value"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: needs columns timestamp,value; missing {', '.join(sorted(missing))}")
    ts = pd.to_datetime(frame["timestamp"], utc=True)
    epoch = (ts - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy()
    if shift_to is not None and epoch.size:
        epoch = epoch + (shift_to - epoch.max())
    values = pd.to_numeric(frame["value"], errors="coerce").to_numpy()
    rng = np.random.default_rng(zlib.crc32(series.encode()))
    events = pd.DataFrame({"event_id": _event_ids(rng, len(frame)), "series": series, "event_epoch": np.round(epoch, 3), "value": values})
    return events


def plan_from_events(events: pd.DataFrame, lookback_hours: int, send_at: float | None = None) -> pd.DataFrame:
    """A landing plan for given events (replay): each arrives at its event time, or at ``send_at``."""
    arrival = events["event_epoch"].to_numpy() if send_at is None else np.full(len(events), float(send_at))
    lines = [
        json.dumps({"event_id": e, "series": s, "event_time": t, "value": (None if not np.isfinite(v) else float(v))}, separators=(",", ":"))
        for e, s, t, v in zip(events["event_id"], events["series"], _iso(events["event_epoch"].to_numpy()), events["value"], strict=True)
    ]
    verdict = _time_verdict(events["event_epoch"].to_numpy(), arrival, lookback_hours)
    verdict[~np.isfinite(events["value"].to_numpy())] = "bad_value"
    return events.assign(arrival_epoch=arrival, line=lines, copy=0, expected_reason=verdict)
