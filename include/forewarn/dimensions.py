"""Which dimension moved: when a series rolled up by dimension (``FOREWARN_ROLLUPS``) is
anomalous, the child series whose deviations from their own forecasts make up its deviation.

A roll-up child of ``checkout.revenue`` for the set ``region,channel`` is named
``checkout.revenue/region=eu/channel=app`` (``sql/aggregate_rollups.sql``). For each declared
set, each child's share is its deviation (actual less forecast, summed over the buckets
considered) over the parent's; the children are ranked by share and the top ones taken until
they make up ``EXPLAINED`` (80%) of it. Of the sets, the one that gets there with the fewest
children is the explanation ("85% of the shortfall is region=eu"); a set none of whose children
pull the same way as the parent explains nothing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from forewarn.events import DIMENSION_KEY, DIMENSION_VALUE

#: The share of the parent's deviation the named children must make up.
EXPLAINED = 0.8
#: Children named at most (the rest are in the record's figures, not the title).
MAX_NAMED = 5
#: The value a roll-up counts an event's dimension value as when the catalog does not keep it.
OTHER = "__other__"


def adds_up(metric: str) -> bool:
    """Whether a metric's deviations add up over a series' roll-up children: counts and sums do,
    means, deviations and percentiles do not (``config.METRIC_MEANINGS``)."""
    from forewarn.config import METRIC_MEANINGS

    meaning = METRIC_MEANINGS.get(metric)
    return meaning is not None and meaning.kind in ("count", "sum")


def child_values(parent: str, name: str, keys: tuple[str, ...]) -> dict[str, str] | None:
    """The dimension values of ``name`` if it is ``parent``'s roll-up child for ``keys``."""
    if not name.startswith(parent + "/"):
        return None
    parts = name[len(parent) + 1 :].split("/")
    if len(parts) != len(keys):
        return None
    values = {}
    for key, part in zip(keys, parts, strict=True):
        k, sep, v = part.partition("=")
        if k != key or not sep or not DIMENSION_VALUE.fullmatch(v):
            return None
        values[key] = v
    return values


def contributors(evidence: pd.DataFrame, series: str, metric: str, sets: tuple[tuple[str, ...], ...],
                 since: Any = None, direction: str | None = None) -> list[dict[str, Any]]:
    """The children of ``series`` (for ``metric``) that explain its deviation in ``evidence``
    (buckets from ``since`` on), best set first-fewest: ``[{"series", "dimensions", "share",
    "deviation"}]``, ranked; empty when there are no children, no deviation to explain (or one
    against ``direction``, the episode's), or the metric does not add up over children (a mean,
    a deviation, a percentile: only counts and sums do). A share is at most 1."""
    if not sets or evidence.empty or not adds_up(metric):
        return []
    return ranked_children(deviations(evidence, series, metric, since)["deviation"], series, sets, direction)


def ranked_children(deviation: pd.Series, series: str, sets: tuple[tuple[str, ...], ...],
                    direction: str | None = None) -> list[dict[str, Any]]:
    """``contributors`` from each series' summed deviation (indexed by series: ``series`` and
    its roll-up children)."""
    total = float(deviation.get(series, math.nan))
    if not math.isfinite(total) or total == 0 or (direction == "below" and total > 0) or (direction == "above" and total < 0):
        return []
    best: list[dict[str, Any]] | None = None
    for keys in sets:
        kids = [(name, values) for name in deviation.index if (values := child_values(series, name, keys)) is not None]
        ranked = sorted(((float(deviation[name]) / total, name, values) for name, values in kids), key=lambda t: (-t[0], t[1]))
        named, covered = [], 0.0
        for share, name, values in ranked:
            if share <= 0 or covered >= EXPLAINED:
                break
            named.append({"series": name, "dimensions": values, "share": round(min(share, 1.0), 3),
                          "deviation": round(float(deviation[name]), 6)})
            covered += share
        if covered >= EXPLAINED and (best is None or len(named) < len(best)):
            best = named
    return best or []


def deviations(evidence: pd.DataFrame, series: str, metric: str, since: Any = None) -> pd.DataFrame:
    """Per series of ``evidence`` named like ``series`` (itself and its roll-up children), for
    ``metric``, over the buckets from ``since`` on where both the actual and the forecast are
    known: ``actual`` and ``expected`` summed, their difference summed (``deviation``) and the
    buckets counted (``buckets``); indexed by series."""
    names = evidence["series"]
    rows = evidence[(evidence["metric"] == metric) & ((names == series) | names.str.startswith(series + "/"))]
    if since is not None:
        rows = rows[rows["bucket_start"] >= pd.Timestamp(since)]
    both = rows[rows["actual"].notna() & rows["mean"].notna()]
    by = both.groupby("series")
    return pd.DataFrame({"actual": by["actual"].sum(), "expected": by["mean"].sum(),
                         "deviation": (both["actual"] - both["mean"]).groupby(both["series"]).sum(), "buckets": by.size()})


def words(found: list[dict[str, Any]]) -> str:
    """``85% region=eu/channel=app, 10% region=us/channel=app``."""
    return ", ".join(f"{c['share']:.0%} {'/'.join(f'{k}={v}' for k, v in c['dimensions'].items())}" for c in found[:MAX_NAMED])


def of_series(name: str) -> dict[str, str]:
    """The dimension values a roll-up series carries, from its name (``{}`` for an event's own
    series): ``checkout.revenue/region=eu/channel=app`` -> ``{"region": "eu", "channel": "app"}``.
    ``=`` is in no event series' name, so the trailing ``/key=value`` parts are the roll-up's."""
    values: dict[str, str] = {}
    for part in reversed(name.split("/")[1:]):
        key, sep, value = part.partition("=")
        if not sep or not DIMENSION_KEY.fullmatch(key) or not DIMENSION_VALUE.fullmatch(value):
            break
        values[key] = value
    return dict(reversed(values.items()))


def split_rollup(name: str) -> tuple[str, dict[str, str]]:
    """A series name as its event series and the dimension values its roll-up carries:
    ``("checkout.revenue", {"region": "eu"})`` for ``checkout.revenue/region=eu``; an event
    series is itself with ``{}``."""
    values = of_series(name)
    return ("/".join(name.split("/")[: -len(values)]) if values else name), values


def cloudwatch_dimensions(series: str, metric: str) -> list[dict[str, str]]:
    """A series' CloudWatch dimensions: ``Series`` and ``Metric``, and for a roll-up one more per
    dimension key (``region=eu``), so its metrics can be found and grouped by region."""
    return [{"Name": "Series", "Value": series}, {"Name": "Metric", "Value": metric},
            *({"Name": k, "Value": v} for k, v in of_series(series).items())]


def parent_of(name: str, sets: tuple[tuple[str, ...], ...]) -> str | None:
    """The series ``name`` is a roll-up child of, for the declared ``sets`` (None: not one):
    every roll-up is made from its event series, so the parent is the name without its
    ``/key=value`` parts, when their keys are a declared set."""
    base, values = split_rollup(name)
    return base if values and frozenset(values) in {frozenset(keys) for keys in sets} else None


def fold_children(actions: list[tuple[str, Any]], episodes: dict[str, Any], closed: list[tuple[str, Any]],
                  sets: tuple[tuple[str, ...], ...], sources: dict[str, str] | None = None, now: Any = None,
                  hold: Any = None) -> tuple[list[tuple[str, Any]], dict[str, list[str]], set[str]]:
    """One incident per cause: a roll-up child whose episode opens while its parent's is open
    joins the parent's (``Episode.member_of``; the parent's ``members``) instead of opening an
    incident, and so do the series of one producer (``sources``: series -> its ``source`` in the
    per-series settings) whose episodes open in the same bucket, on the first of them by name;
    their updates and resolutions are not sent either, and the incident they joined resolves
    once they have all recovered (its episode is held open, calm, until then). Returns the actions left and,
    per parent, the children that joined it now (the caller tells the parent's sinks). A member
    whose parent's episode has ended is released: it is opened on its own by the run's pass over
    episodes not yet reported. (Joining is judged on the episodes as the run leaves them: a child
    that fell a bucket before its parent within one run joins it too.)

    A roll-up child whose episode opened less than ``hold`` before ``now`` while its parent is
    calm is held, not opened (a regional drop is often seen in the region a bucket or two before
    the total): if the parent's episode opens meanwhile, the child joins it; once the hold is
    over, it opens on its own (by the run's "not yet reported" pass). Returns the actions left,
    the children that joined each parent now, and the children held."""
    folded_ids = {ep.id for _, ep in closed if ep.member_of}
    # a leader whose members have not recovered stays open (calm) until they have
    ended = {ep.id: (series, ep) for series, ep in closed}
    held = set()
    for kind, incident in actions:
        if kind == "resolve" and incident.episode in ended:
            series, ep = ended[incident.episode]
            if series not in episodes and any(m.member_of == ep.id for m in episodes.values()):
                episodes[series] = ep
                held.add(incident.episode)
    released = set()
    for series, ep in episodes.items():  # a parent episode that ended (or was lost): its members speak for themselves
        if ep.member_of:
            parent = episodes.get(ep.member_of.split("|", 1)[0])
            if parent is None or parent.id != ep.member_of:
                ep.member_of, ep.reported = "", False  # opened by the run's "not yet reported" pass
                released.add(series)
    joined: dict[str, list[str]] = {}
    out = []

    def join(series: str, ep: Any, lead: str) -> None:
        """``series``'s episode joins the open episode of ``lead``: told once, by its incident."""
        mine = episodes[lead]
        ep.member_of, ep.reported = mine.id, True
        if series not in mine.members:
            mine.members.append(series)
            joined.setdefault(lead, []).append(series)

    # one producer (a ``source`` in the per-series settings): episodes of its series that open
    # in the same bucket are one incident, on the first of them by name
    leaders: dict[tuple[str, str], str] = {}
    for kind, incident in actions:
        source = (sources or {}).get(incident.series)
        ep = episodes.get(incident.series)
        if kind == "open" and source and ep is not None and not ep.member_of:
            key = (source, ep.started)
            leaders[key] = min(leaders.get(key, incident.series), incident.series)
    for kind, incident in actions:
        ep = episodes.get(incident.series)
        source = (sources or {}).get(incident.series)
        leader = leaders.get((source, ep.started)) if kind == "open" and source and ep is not None else None
        if leader is not None and leader != incident.series and not ep.member_of:
            join(incident.series, ep, leader)
            continue
        if kind == "open" and ep is not None and not ep.member_of and sets:
            parent = parent_of(incident.series, sets)
            if parent in episodes and not episodes[parent].member_of:
                join(incident.series, ep, parent)
                continue
        if (ep is not None and ep.member_of) or (kind == "resolve" and incident.episode in folded_ids | held) \
                or (kind == "update" and incident.series in released):
            continue
        out.append((kind, incident))
    # a child not yet told to anyone: it joins its parent's open episode, or waits for it
    waiting: set[str] = set()
    for series, ep in sorted(episodes.items()) if sets else ():
        if ep.member_of or ep.reported or (parent := parent_of(series, sets)) is None:
            continue
        if parent in episodes and not episodes[parent].member_of:
            join(series, ep, parent)
        elif now is not None and hold and pd.Timestamp(ep.started) + pd.Timedelta(hold) > pd.Timestamp(now):
            waiting.add(series)
    never_told = {ep.id for series, ep in closed if not ep.reported and not ep.member_of and sets and parent_of(series, sets)}
    out = [(kind, incident) for kind, incident in out
           if not (incident.series in waiting or (episodes.get(incident.series) is not None and episodes[incident.series].member_of)
                   or (kind == "resolve" and incident.episode in never_told))]
    for kind, incident in out:  # a parent opening in this run lists them from the start
        if kind == "open" and incident.series in joined:
            incident.related = list(episodes[incident.series].members)
            joined.pop(incident.series)
    return out, joined, waiting


def members_recovered(closed: list[tuple[str, Any]], episodes: dict[str, Any]) -> dict[str, list[str]]:
    """Per series whose incident is still open, the members of it (roll-up children, a
    producer's other series) whose episodes ended in this run: its incident says they recovered."""
    out: dict[str, list[str]] = {}
    for series, ep in closed:
        lead = ep.member_of.split("|", 1)[0] if ep.member_of else ""
        if lead and lead in episodes and episodes[lead].id == ep.member_of:
            out.setdefault(lead, []).append(series)
    return {lead: sorted(names) for lead, names in out.items()}


def accumulate(evidence: pd.DataFrame, series: str, episode: Any, sets: tuple[tuple[str, ...], ...]) -> list[dict[str, Any]]:
    """``contributors`` over the whole of an open episode so far, for its lead deviation if its
    metric adds up over children, else the first of its deviations that does (a drop in orders
    that the mean order value led): each run adds its buckets' deviations (``evidence``) to the
    sums the episode keeps (``Episode.explained``, with the children they name; started afresh
    when the metric explained changes), so one noisy bucket does not decide the shares. Returns
    the children named now."""
    candidates = [(episode.metric, episode.direction, pd.Timestamp(episode.started))]
    candidates += [(d["metric"], d["direction"], pd.Timestamp(d["since"])) for d in episode.deviations or []]
    for metric, direction, since in candidates:
        if not adds_up(metric):
            continue
        now = deviations(evidence, series, metric, since)["deviation"] if len(evidence) else pd.Series(dtype=float)
        kept = episode.explained if episode.explained.get("metric") == metric else {}
        sums = pd.Series(kept.get("sums", {}), dtype=float).add(now, fill_value=0.0)
        named = ranked_children(sums, series, sets, direction)
        episode.explained = {"metric": metric, "sums": {k: float(v) for k, v in sums.items()}, "named": named}
        return named
    return []


# --------------------------------------------------------------------------------------------
# The dimension catalog: which values make series of their own
# --------------------------------------------------------------------------------------------


@dataclass
class Catalog:
    """Per roll-up key, the values kept as series of their own, each with the first bucket (epoch
    seconds) from which it is; any other value counts as ``OTHER``. Values are admitted by volume
    while a key has fewer than ``FOREWARN_ROLLUP_MAX_VALUES`` (``admit``) and never dropped, so a
    series, once made, stays. ``high_water``: the end of the newest window aggregated (epoch
    seconds); only a window ending after it admits values, and from no earlier than it, so no
    bucket already written changes and a rerun or backfill rewrites the same rows. The values
    the first window ever admits count from the start of time (``since`` 0), so history
    backfilled after a deployment's first run has them too."""

    values: dict[str, dict[str, int]] = field(default_factory=dict)
    high_water: int | None = None

    def to_json(self) -> bytes:
        return json.dumps({"values": self.values, "high_water": self.high_water}, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, text: bytes | str) -> Catalog:
        doc = json.loads(text)
        return cls({k: {v: int(since) for v, since in vals.items()} for k, vals in doc.get("values", {}).items()},
                   doc.get("high_water"))

    def kept(self, key: str) -> int:
        return len(self.values.get(key, {}))


def read_catalog(settings: Any, s3: Any) -> Catalog:
    """The dimension catalog in the bucket (empty before the first roll-up aggregation)."""
    from forewarn.layout import dimension_catalog_key

    try:
        body = s3.get_object(Bucket=settings.bucket, Key=dimension_catalog_key(settings))["Body"].read()
    except s3.exceptions.NoSuchKey:
        return Catalog()
    return Catalog.from_json(body)


def write_catalog(settings: Any, s3: Any, catalog: Catalog) -> None:
    """Write the catalog merged with the one in the bucket now: a value another window admitted
    meanwhile is kept (with its own ``since``), and the high water never goes back (two windows
    aggregated at once; what remains is the instant between this read and the write)."""
    from forewarn.layout import dimension_catalog_key

    current = read_catalog(settings, s3)
    for key, values in current.values.items():
        mine = catalog.values.setdefault(key, {})
        for value, since in values.items():
            mine[value] = min(since, mine.get(value, since))
    if current.high_water is not None:
        catalog.high_water = max(catalog.high_water or current.high_water, current.high_water)
    s3.put_object(Bucket=settings.bucket, Key=dimension_catalog_key(settings), Body=catalog.to_json(), ContentType="application/json")


def admit(catalog: Catalog, volumes: list[tuple[str, str, int]], keys: list[str], max_values: int, since: int) -> list[tuple[str, str]]:
    """Admit, in place, per key the values of ``volumes`` (key, value, events) not yet kept, the
    most events first (then by value), while the key keeps fewer than ``max_values``; each counts
    as its own from bucket ``since``. ``OTHER`` itself is never admitted. Returns what was."""
    admitted = []
    for key in keys:
        kept = catalog.values.setdefault(key, {})
        new = sorted(((-int(n), v) for k, v, n in volumes if k == key and v not in kept and v != OTHER and DIMENSION_VALUE.fullmatch(v)))
        for _, value in new[: max(max_values - len(kept), 0)]:
            kept[value] = int(since)
            admitted.append((key, value))
    return admitted


def kept_conditions(catalog: Catalog | None, keys: list[str]) -> dict[str, Any]:
    """``kept1``..``kept3`` of ``sql/aggregate_rollups.sql``: for each slot, the SQL condition on
    its raw value (``r1``..) and ``bucket_epoch`` under which the value counts as itself, from
    the catalog (``None``: every value does). Values are checked against the dimension rule
    before they are written into the statement."""
    from forewarn.query import SqlCondition

    out: dict[str, Any] = {}
    for i in range(3):
        name, column = f"kept{i + 1}", f"r{i + 1}"
        if catalog is None:
            out[name] = SqlCondition("TRUE")
            continue
        entries = catalog.values.get(keys[i], {}) if i < len(keys) else {}
        by_since: dict[int, list[str]] = {}
        for value, since in sorted(entries.items()):
            if not DIMENSION_VALUE.fullmatch(value) or value == OTHER:
                raise ValueError(f"the dimension catalog holds {keys[i]}={value!r}, which no event can carry")
            by_since.setdefault(int(since), []).append(value)
        terms = [f"({column} IN ({', '.join(repr(v) for v in values)}) AND bucket_epoch >= {since})"
                 for since, values in sorted(by_since.items())]
        out[name] = SqlCondition(" OR ".join(terms) or "FALSE")
    return out


def refresh_catalog(settings: Any, engine: Any, s3: Any, params: dict[str, Any], out_start: int, out_end: int,
                    arrival: tuple[Any, Any], keys: tuple[str, ...]) -> tuple[Catalog, list[tuple[str, str]]]:
    """The catalog an aggregation window uses: read, and — when the window ends after every one
    aggregated so far and a key has room — with the window's values admitted by volume
    (``sql/dimension_values.sql``) from the later of its start and the previous high water (from
    the start of time by the first window ever: no hour is written yet); written back when it
    moved. Returns it and the values admitted."""
    from forewarn.query import slot_params

    catalog = read_catalog(settings, s3)
    if catalog.high_water is not None and out_end <= catalog.high_water:
        return catalog, []  # an older window (a rerun, a backfill): the catalog as it is
    admitted: list[tuple[str, str]] = []
    if any(catalog.kept(k) < settings.rollup_max_values for k in keys):
        table = engine.run("dimension_values", {**params, **slot_params(keys)}, *arrival)
        volumes = list(zip(table.column("dimension_key").to_pylist(), table.column("dimension_value").to_pylist(),
                           table.column("events").to_pylist(), strict=True))
        # the first window ever aggregated with roll-ups: nothing is written yet, so its values
        # count as themselves in every hour (a backfill of the history after it too); later,
        # from no hour already written
        since = 0 if catalog.high_water is None else max(out_start, catalog.high_water)
        admitted = admit(catalog, volumes, list(keys), settings.rollup_max_values, since)
    catalog.high_water = out_end
    write_catalog(settings, s3, catalog)
    return catalog, admitted


# --------------------------------------------------------------------------------------------
# Which roll-ups each series has: FOREWARN_ROLLUPS, and per series the settings' ``rollups``
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RollupPlan:
    """The roll-ups of every series: ``keys``, the distinct keys in the query's slot order
    (``FOREWARN_ROLLUPS``' first, then the per-series rules' in file order), which is also the
    order a child's name gives them; ``default``, the sets of a series no rule gives
    ``rollups``; ``rules``, (pattern, sets) of the rules that do, in file order (the last that
    matches a series wins)."""

    keys: tuple[str, ...] = ()
    default: tuple[tuple[str, ...], ...] = ()
    rules: tuple[tuple[str, tuple[tuple[str, ...], ...]], ...] = ()

    @property
    def sets(self) -> tuple[tuple[str, ...], ...]:
        """Every set some series has, each once."""
        seen: dict[frozenset[str], tuple[str, ...]] = {}
        for sets in (self.default, *(sets for _, sets in self.rules)):
            for keys in sets:
                seen.setdefault(frozenset(keys), keys)
        return tuple(seen.values())

    def sets_for(self, series: str) -> tuple[tuple[str, ...], ...]:
        import fnmatch

        for pattern, sets in reversed(self.rules):
            if fnmatch.fnmatchcase(series, pattern):
                return sets
        return self.default

    def condition(self) -> Any:
        """``rollups_for`` of ``sql/aggregate_rollups.sql``: the SQL condition on a row's series
        (``base_series``) and grouping flags (``g1``..``g3``) under which its set is one the
        series has (the series' own total always is)."""
        from forewarn.query import SqlCondition

        if not self.rules:
            return SqlCondition("TRUE")  # every series has every set: the query computes only those

        def allowed(sets: tuple[tuple[str, ...], ...]) -> str:
            flags = [tuple(0 if key in keys else 1 for key in self.keys) for keys in sets]
            terms = [" AND ".join(f"g{i + 1} = {f}" for i, f in enumerate((*fl, 1, 1, 1)[:3])) for fl in [(1,) * len(self.keys), *flags]]
            return " OR ".join(f"({t})" for t in terms)

        branches = " ".join(f"WHEN regexp_like(base_series, '{_glob_regex(pattern)}') THEN ({allowed(sets)})"
                            for pattern, sets in reversed(self.rules))
        return SqlCondition(f"CASE {branches} ELSE ({allowed(self.default)}) END")


def _glob_regex(pattern: str) -> str:
    """A shell-style pattern (``fnmatch``: ``*``, ``?``, ``[seq]``, ``[!seq]``, with fnmatch's
    bracket rules: ``!`` then a leading ``]`` belong to the set, an empty range such as ``z-a``
    matches nothing) as an anchored regular expression that Trino and DuckDB (RE2) read alike:
    every character but a range's ``-`` is escaped. Quoted for a SQL string."""
    import re

    out, i, n = ["^"], 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            j = i + (i < n and pattern[i] == "!")
            j += j < n and pattern[j] == "]"
            j = pattern.find("]", j)
            if j < 0:  # no closing bracket: a plain '['
                out.append(re.escape(c))
                continue
            body, i = pattern[i:j], j + 1
            negate = body.startswith("!")
            body = body[1:] if negate else body
            chars, k = [], 0
            while k < len(body):
                if k + 2 < len(body) and body[k + 1] == "-":  # a range; an empty one adds nothing
                    lo, hi = body[k], body[k + 2]
                    if lo <= hi:
                        chars.append(re.escape(lo) + ("-" + re.escape(hi) if lo != hi else ""))
                    k += 3
                else:
                    chars.append(body[k] if body[k].isalnum() else "\\" + body[k])
                    k += 1
            if chars:
                out.append("[" + ("^" if negate else "") + "".join(chars) + "]")
            else:
                out.append("[\\s\\S]" if negate else "[^\\s\\S]")  # any character / none
        else:
            out.append(re.escape(c))
    out.append("$")
    return "".join(out).replace("'", "''")


def rollup_plan(settings: Any, rules: list[Any] | None = None) -> RollupPlan:
    """The roll-ups ``FOREWARN_ROLLUPS`` and the per-series ``rules`` declare; at most three
    distinct keys in all (``SeriesSettingsError`` names the rule that adds a fourth)."""
    from forewarn.config import MAX_ROLLUP_KEYS
    from forewarn.series_settings import SeriesSettingsError

    default = settings.rollup_sets
    # FOREWARN_ROLLUPS' keys first, then the rules' in alphabetical order: a rule added or
    # removed never reorders (so renames) another series' roll-ups
    base = list(dict.fromkeys(k for ks in default for k in ks))
    keys, extra = list(base), set()
    with_sets = []
    for rule in rules or []:
        if rule.rollups is None:
            continue
        extra |= {k for ks in rule.rollups for k in ks} - set(base)
        keys = base + sorted(extra)
        if len(keys) > MAX_ROLLUP_KEYS:
            raise SeriesSettingsError(f"series settings line {rule.line}: 'rollups' brings the dimension keys to {len(keys)} "
                                      f"({', '.join(keys)}); at most {MAX_ROLLUP_KEYS} in FOREWARN_ROLLUPS and every rule together")
        with_sets.append((rule.match, rule.rollups))

    def ordered(sets: Any) -> tuple[tuple[str, ...], ...]:
        return tuple(tuple(sorted(ks, key=keys.index)) for ks in sets)

    return RollupPlan(tuple(keys), ordered(default), tuple((m, ordered(sets)) for m, sets in with_sets))
