"""Which dimension moved: when a series rolled up by dimension (``FOREWARN_ROLLUPS``) is
anomalous, the child series whose deviations from their own forecasts make up its deviation.

A roll-up child of ``checkout.revenue`` for the set ``region,channel`` is named
``checkout.revenue/region:eu/channel:app`` (``sql/aggregate_rollups.sql``). For each declared
set, each child's share is its deviation (actual less forecast, summed over the buckets
considered) over the parent's; the children are ranked by share and the top ones taken until
they make up ``EXPLAINED`` (80%) of it. Of the sets, the one that gets there with the fewest
children is the explanation ("85% of the shortfall is region=eu"); a set none of whose children
pull the same way as the parent explains nothing.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from forewarn.events import DIMENSION_VALUE

#: The share of the parent's deviation the named children must make up.
EXPLAINED = 0.8
#: Children named at most (the rest are in the record's figures, not the title).
MAX_NAMED = 5


def child_values(parent: str, name: str, keys: tuple[str, ...]) -> dict[str, str] | None:
    """The dimension values of ``name`` if it is ``parent``'s roll-up child for ``keys``."""
    if not name.startswith(parent + "/"):
        return None
    parts = name[len(parent) + 1 :].split("/")
    if len(parts) != len(keys):
        return None
    values = {}
    for key, part in zip(keys, parts, strict=True):
        k, sep, v = part.partition(":")
        if k != key or not sep or not DIMENSION_VALUE.fullmatch(v):
            return None
        values[key] = v
    return values


def contributors(evidence: pd.DataFrame, series: str, metric: str, sets: tuple[tuple[str, ...], ...],
                 since: Any = None) -> list[dict[str, Any]]:
    """The children of ``series`` (for ``metric``) that explain its deviation in ``evidence``
    (buckets from ``since`` on), best set first-fewest: ``[{"series", "dimensions", "share",
    "deviation"}]``, ranked; empty when there are no children or no deviation to explain."""
    if not sets or evidence.empty:
        return []
    rows = evidence[(evidence["metric"] == metric) & evidence["series"].str.startswith(series)]
    if since is not None:
        rows = rows[rows["bucket_start"] >= pd.Timestamp(since)]
    both = rows[rows["actual"].notna() & rows["mean"].notna()]
    deviation = (both["actual"] - both["mean"]).groupby(both["series"]).sum()
    total = float(deviation.get(series, math.nan))
    if not math.isfinite(total) or total == 0:
        return []
    best: list[dict[str, Any]] | None = None
    for keys in sets:
        kids = [(name, values) for name in deviation.index if (values := child_values(series, name, keys)) is not None]
        ranked = sorted(((float(deviation[name]) / total, name, values) for name, values in kids), key=lambda t: (-t[0], t[1]))
        named, covered = [], 0.0
        for share, name, values in ranked:
            if share <= 0 or covered >= EXPLAINED:
                break
            named.append({"series": name, "dimensions": values, "share": round(share, 3),
                          "deviation": round(float(deviation[name]), 6)})
            covered += share
        if covered >= EXPLAINED and (best is None or len(named) < len(best)):
            best = named
    return best or []


def words(found: list[dict[str, Any]]) -> str:
    """``85% region=eu/channel=app, 10% region=us/channel=app``."""
    return ", ".join(f"{c['share']:.0%} {'/'.join(f'{k}={v}' for k, v in c['dimensions'].items())}" for c in found[:MAX_NAMED])

