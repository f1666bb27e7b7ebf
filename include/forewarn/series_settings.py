"""Per-series settings: a YAML file of rules, each naming series by a shell-style pattern, that
change how the comparison judges them. Rules apply in file order; a later rule that matches
overrides the fields it sets.

    # s3://BUCKET/settings/series.yaml (FOREWARN_SERIES_SETTINGS_KEY)
    series:
      - match: "payments.*"
        direction: below            # alert only on drops (above, below, both)
        min_abs_deviation: 5        # ignore deviations smaller than 5 (the metric's unit) ...
        min_rel_deviation: 0.1      # ... or than 10% of the forecast
      - match: "payments.refunds"
        threshold: 0.8              # anomaly likelihood needed (default: alert_threshold)
        metrics: [event_count]      # judge only these metrics of the series
      - match: "checkout.*"
        sinks: [pagerduty, slack]   # where its incidents open (default: every FOREWARN_INCIDENT_SINKS sink)
        model: ets                  # the forecasting model training fits (forecast.MODELS; default ar)
      - match: "orders.*"
        holidays: US                # public holidays (the holidays package's code, e.g. US, US-CA, DE-BY) ...
        events: [2026-11-27]        # ... and days of your own: kept out of training, a day ahead behaves like a Sunday
        tz: America/New_York        # its time zone: holidays are its local days, its seasons its local clock (default UTC)
      - match: "shop-eu.*"
        source: shop-eu             # one producer: its series' episodes that start together are one incident
      - match: "checkout.revenue"
        rollups: region;region,channel  # its roll-ups by dimension (default: FOREWARN_ROLLUPS; none: none)

Errors name the file, the line and the field.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from forewarn.calendars import Calendar, check_country

DIRECTIONS = ("above", "below", "both")
FIELDS = {"match", "threshold", "direction", "min_abs_deviation", "min_rel_deviation", "metrics", "sinks", "model",
          "holidays", "events", "tz", "source", "rollups"}
#: The fields a later matching rule overrides, in ``Rule`` and ``Applied``.
OVERRIDES = ("threshold", "direction", "min_abs_deviation", "min_rel_deviation", "metrics", "sinks", "model",
             "holidays", "events", "tz", "source", "rollups")


#: A producer's name (``source``).
SOURCE_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


class SeriesSettingsError(ValueError):
    """A rule that cannot be used: the message names the file, the line and the field."""


@dataclass(frozen=True)
class Rule:
    match: str
    line: int
    threshold: float | None = None
    direction: str | None = None
    min_abs_deviation: float | None = None
    min_rel_deviation: float | None = None
    metrics: tuple[str, ...] | None = None
    sinks: tuple[str, ...] | None = None
    model: str | None = None
    holidays: str | None = None
    events: tuple[date, ...] | None = None
    tz: str | None = None
    source: str | None = None
    rollups: tuple[tuple[str, ...], ...] | None = None  # () for none

    def matches(self, series: str) -> bool:
        return fnmatch.fnmatchcase(series, self.match)


@dataclass(frozen=True)
class Applied:
    """What the rules say of one series (None: the defaults)."""

    threshold: float | None = None
    direction: str = "both"
    min_abs_deviation: float = 0.0
    min_rel_deviation: float = 0.0
    metrics: tuple[str, ...] | None = None
    sinks: tuple[str, ...] | None = None  # where its incidents open (None: every configured sink)
    model: str | None = None  # the forecasting model training fits (None: the default)
    holidays: str | None = None  # a public-holiday calendar (the holidays package's code)
    events: tuple[date, ...] | None = None  # days of the operator's own
    tz: str | None = None  # the series' time zone (None: UTC)
    source: str | None = None  # the producer it comes from: episodes of one source that start together are one incident
    rollups: tuple[tuple[str, ...], ...] | None = None  # its roll-up dimension sets (None: FOREWARN_ROLLUPS; (): none)
    rules: tuple[int, ...] = field(default_factory=tuple)  # the lines of the rules that matched

    @property
    def calendar(self) -> Calendar:
        """The series' holiday calendar (empty: none)."""
        return Calendar(country=self.holidays, events=self.events or (), tz=self.tz or "UTC")


def parse_series_settings(text: str, where: str = "series settings", metrics: list[str] | None = None) -> list[Rule]:
    """The rules of a YAML document (empty: none); ``SeriesSettingsError`` names the line and
    field of the first thing wrong."""
    import yaml

    try:
        root = yaml.compose(text) if text.strip() else None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise SeriesSettingsError(f"{where}{line}: not YAML ({getattr(err, 'problem', None) or err})") from err
    if root is None:
        return []

    def at(node: Any) -> int:
        return node.start_mark.line + 1

    if not isinstance(root, yaml.MappingNode):
        raise SeriesSettingsError(f"{where} line {at(root)}: the file is a mapping with one key, 'series' (a list of rules)")
    top = {k.value: v for k, v in root.value}
    unknown = set(top) - {"series"}
    if unknown:
        key = next(k for k, _ in root.value if k.value in unknown)
        raise SeriesSettingsError(f"{where} line {at(key)}: unknown key {key.value!r}; the file has one key, 'series'")
    seq = top.get("series")
    if seq is None or (isinstance(seq, yaml.ScalarNode) and seq.tag.endswith(":null")):
        return []
    if not isinstance(seq, yaml.SequenceNode):
        raise SeriesSettingsError(f"{where} line {at(seq)}: 'series' is a list of rules (each starting with '- match:')")
    rules = []
    for item in seq.value:
        if not isinstance(item, yaml.MappingNode):
            raise SeriesSettingsError(f"{where} line {at(item)}: a rule is a mapping with 'match' and the settings it changes")
        nodes = {k.value: (k, v) for k, v in item.value}
        for name, (key, _) in nodes.items():
            if name not in FIELDS:
                raise SeriesSettingsError(f"{where} line {at(key)}: unknown field {name!r}; the fields are {', '.join(sorted(FIELDS))}")
        values = yaml.safe_load(yaml.serialize(item))
        line = at(item)

        def bad(name: str, says: str, nodes: dict[str, Any] = nodes) -> SeriesSettingsError:
            return SeriesSettingsError(f"{where} line {at(nodes[name][1])}: '{name}' {says}")

        match = values.get("match")
        if "match" not in nodes or not isinstance(match, str) or not match:
            raise SeriesSettingsError(f"{where} line {line}: a rule needs 'match', a pattern over series names (e.g. 'payments.*')")
        threshold = values.get("threshold")
        if "threshold" in nodes and (not _number(threshold) or not 0 < threshold < 1):
            raise bad("threshold", f"is {threshold!r}: an anomaly likelihood between 0 and 1 (exclusive)")
        direction = values.get("direction")
        if "direction" in nodes and direction not in DIRECTIONS:
            raise bad("direction", f"is {direction!r}; choose one of {', '.join(DIRECTIONS)}")
        for name in ("min_abs_deviation", "min_rel_deviation"):
            if name in nodes and (not _number(values[name]) or values[name] < 0):
                raise bad(name, f"is {values[name]!r}: a number at least 0")
        chosen = values.get("metrics")
        if "metrics" in nodes:
            if not isinstance(chosen, list) or not chosen or not all(isinstance(m, str) for m in chosen):
                raise bad("metrics", "is a list of metric names, e.g. [event_count]")
            unknown_metrics = sorted(set(chosen) - set(metrics or chosen))
            if unknown_metrics:
                raise bad("metrics", f"names {', '.join(unknown_metrics)}, not among the metrics forecast ({', '.join(metrics or [])})")
        routed = values.get("sinks")
        if "sinks" in nodes:
            from forewarn.publish import SINKS

            if not isinstance(routed, list) or not routed or not all(isinstance(x, str) for x in routed):
                raise bad("sinks", "is a list of incident sinks, e.g. [pagerduty, slack]")
            unknown_sinks = sorted(set(routed) - set(SINKS))
            if unknown_sinks:
                raise bad("sinks", f"names {', '.join(unknown_sinks)}; the sinks are {', '.join(SINKS)}")
        model = values.get("model")
        if "model" in nodes:
            from forewarn.forecast import MODELS

            if model not in MODELS:
                raise bad("model", f"is {model!r}; the models are {', '.join(MODELS)}")
        country = values.get("holidays")
        if "holidays" in nodes:
            why = check_country(country) if isinstance(country, str) and country else "is a country code, e.g. US or DE-BY"
            if why:
                raise bad("holidays", why)
        events = values.get("events")
        if "events" in nodes:
            events = _dates(events)
            if events is None:
                raise bad("events", "is a list of dates (YYYY-MM-DD), e.g. [2026-11-27, 2026-12-24]")
        tz = values.get("tz")
        if "tz" in nodes:
            try:
                ZoneInfo(str(tz))
            except (ZoneInfoNotFoundError, ValueError):
                raise bad("tz", f"is {tz!r}, not an IANA time zone (e.g. Europe/Berlin)") from None
        source = values.get("source")
        if "source" in nodes and (not isinstance(source, str) or not SOURCE_NAME.fullmatch(source)):
            raise bad("source", f"is {source!r}: a producer's name of 1-64 of [A-Za-z0-9_.:-], e.g. shop-eu")
        rollups = values.get("rollups")
        if "rollups" in nodes:
            from forewarn.config import parse_rollups

            try:
                if not isinstance(rollups, str):
                    raise ValueError("is dimension sets separated by ';', keys by ',' (e.g. region;region,channel), or none")
                rollups = tuple(parse_rollups(rollups))
            except ValueError as err:
                raise bad("rollups", f"is {values.get('rollups')!r}: {err}") from None
        rules.append(Rule(match=match, line=line, threshold=threshold, direction=direction,
                          min_abs_deviation=values.get("min_abs_deviation"), min_rel_deviation=values.get("min_rel_deviation"),
                          metrics=tuple(chosen) if chosen else None, sinks=tuple(routed) if routed else None, model=model,
                          holidays=country, events=events, tz=str(tz) if tz else None, source=source,
                          rollups=rollups if "rollups" in nodes else None))
    return rules


def _dates(value: Any) -> tuple[date, ...] | None:
    """A list of dates (YAML dates or ISO strings), or None when it is not one."""
    if not isinstance(value, list) or not value:
        return None
    out = []
    for item in value:
        if isinstance(item, date) and not isinstance(item, datetime):
            out.append(item)
            continue
        try:
            out.append(date.fromisoformat(str(item)))
        except ValueError:
            return None
    return tuple(out)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and bool(np.isfinite(value))


def applied(rules: list[Rule], series: str) -> Applied:
    """The settings of one series: every matching rule in file order, later ones winning."""
    out: dict[str, Any] = {}
    lines = []
    for rule in rules:
        if not rule.matches(series):
            continue
        lines.append(rule.line)
        for name in OVERRIDES:
            value = getattr(rule, name)
            if value is not None:
                out[name] = value
    return Applied(**out, rules=tuple(lines))


def read_series_settings(settings: Any, s3: Any) -> list[Rule]:
    """The rules in ``s3://BUCKET/<series_settings_key>`` (none when the object is absent)."""
    key = settings.series_settings_key
    if not key:
        return []
    try:
        text = s3.get_object(Bucket=settings.bucket, Key=key)["Body"].read().decode("utf-8")
    except s3.exceptions.NoSuchKey:
        return []
    return parse_series_settings(text, f"s3://{settings.bucket}/{key}", settings.metric_list)


def route_problems(rules: list[Rule], configured: list[str], where: str = "series settings") -> list[str]:
    """What is wrong with the rules' routes given the sinks the comparison has: a rule that
    routes to a sink ``FOREWARN_INCIDENT_SINKS`` does not list (its series then go to the sinks
    it names that exist, or to every sink when none does: never nowhere)."""
    out = []
    for rule in rules:
        missing = sorted(set(rule.sinks or ()) - set(configured))
        if missing:
            out.append(f"{where} line {rule.line}: 'sinks' names {', '.join(missing)}, which FOREWARN_INCIDENT_SINKS "
                       f"({', '.join(configured) or 'empty'}) does not list")
    return out


def routed_sinks(sinks: list[Any], names: tuple[str, ...] | None) -> list[Any]:
    """The sinks a series' incidents open in: those its settings name that exist, else all."""
    chosen = [s for s in sinks if names is None or s.name in names]
    return chosen or sinks


def judge_arrays(rules: list[Rule], keys: list[tuple[str, str]], default_threshold: float) -> dict[str, np.ndarray] | None:
    """Per (series, metric) key, what deciding a bucket anomalous needs: its threshold, its
    direction (1 above only, -1 below only, 0 both), the smallest absolute and relative
    deviation worth an alert, and whether the metric is judged at all (None: no rules)."""
    if not rules:
        return None
    n = len(keys)
    out = {"threshold": np.full(n, default_threshold), "direction": np.zeros(n, dtype=np.int8),
           "min_abs": np.zeros(n), "min_rel": np.zeros(n), "judged": np.ones(n, dtype=bool)}
    cache: dict[str, Applied] = {}
    for i, (series, metric) in enumerate(keys):
        a = cache.get(series) or cache.setdefault(series, applied(rules, series))
        if a.threshold is not None:
            out["threshold"][i] = a.threshold
        out["direction"][i] = {"above": 1, "below": -1}.get(a.direction, 0)
        out["min_abs"][i], out["min_rel"][i] = a.min_abs_deviation, a.min_rel_deviation
        out["judged"][i] = a.metrics is None or metric in a.metrics
    return out
