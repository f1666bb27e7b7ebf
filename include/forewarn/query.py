"""The aggregation SQL, written once in Athena's Trino dialect, and the engines that run it.

Queries live in ``forewarn/sql/*.sql``. A query may read another shipped query by its file name
(``FROM classified_events``); :func:`render` inlines those as sub-queries. The one relation no
file defines, ``raw_lines``, is supplied by the engine: a Glue table on Athena, a DuckDB view over
the same S3 objects locally. Both engines return :class:`pyarrow.Table` results.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import sqlglot
from sqlglot import exp

from forewarn.layout import hour_key

log = logging.getLogger(__name__)

_PARAM = re.compile(r"\$\{(\w+)\}")
_SAFE_TEXT = re.compile(r"^[A-Za-z0-9_./:\- ]*$")


class QueryError(RuntimeError):
    """A query failed in its engine; the message carries the engine's reason."""


def sql_text(name: str) -> str:
    """The Trino text of the shipped query ``name`` (file ``sql/<name>.sql``)."""
    return resources.files("forewarn.sql").joinpath(f"{name}.sql").read_text()


def shipped_queries() -> list[str]:
    return sorted(p.name[:-4] for p in resources.files("forewarn.sql").iterdir() if p.name.endswith(".sql"))


def substitute(text: str, params: dict[str, Any]) -> str:
    """Fill ``${name}`` placeholders. Values are ints, floats or plain identifiers/timestamps only,
    checked here, so no caller-supplied text can change the statement."""

    def fill(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in params:
            raise KeyError(f"query parameter ${{{key}}} was not given")
        value = params[key]
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise TypeError(f"query parameter {key} must be a number or plain text, got {type(value).__name__}")
        text_value = str(value)
        if isinstance(value, str) and not _SAFE_TEXT.match(text_value):
            raise ValueError(f"query parameter {key}={value!r} holds characters not allowed in SQL text")
        return text_value

    return _PARAM.sub(fill, text)


def render(name: str, params: dict[str, Any], sources: dict[str, str] | None = None) -> exp.Expression:
    """Parse query ``name`` (Trino) with its parameters; every relation it reads that names another
    shipped query, or one given in ``sources`` (name -> Trino SELECT text), becomes a ``WITH``
    clause of its own, once, however many times it is read (``classified_events`` reads
    ``parsed_lines`` twice: the engine parses each line once)."""
    sources = dict(sources or {})
    known = set(shipped_queries()) | set(sources)
    defined: dict[str, exp.Expression] = {}  # in dependency order

    def reads(tree: exp.Expression) -> list[str]:
        own = {cte.alias_or_name for cte in tree.find_all(exp.CTE)}
        names = [t.name for t in tree.find_all(exp.Table) if not t.args.get("db") and t.name in known and t.name not in own]
        return list(dict.fromkeys(names))

    def define(ref: str, path: tuple[str, ...]) -> None:
        if ref in defined:
            return
        if ref in path:
            raise ValueError(f"query {ref} reads itself through {' -> '.join(path)}")
        tree = sqlglot.parse_one(sources.get(ref) or substitute(sql_text(ref), params), read="trino")
        for dep in reads(tree):
            define(dep, (*path, ref))
        defined[ref] = tree

    main = sqlglot.parse_one(substitute(sql_text(name), params), read="trino")
    for dep in reads(main):
        define(dep, (name,))
    for ref, tree in defined.items():
        main = main.with_(ref, as_=tree, append=True, copy=False)
    return main


def to_duckdb(tree: exp.Expression) -> str:
    """Translate a rendered Trino query to DuckDB with sqlglot, plus the fix-ups it lacks.

    Two deliberate differences, so local results are exact and reproducible to the bit whatever
    else a window reads: ``approx_percentile`` becomes DuckDB's exact ``quantile_cont`` (its
    ``approx_quantile`` is not reproducible), and floating-point sums, means and standard
    deviations accumulate their values in sorted order (``sum(v ORDER BY v)``): the order rows
    reach an aggregate depends on everything else in the query (the de-duplication's window
    repartitions them), and float addition is not associative.
    """

    def fix(node: exp.Expression) -> exp.Expression:
        if isinstance(node, _ORDERED_AGGREGATES) and not isinstance(node.this, exp.Order):
            arg = node.this
            return node.__class__(this=exp.Order(this=arg, expressions=[exp.Ordered(this=arg.copy(), nulls_first=False)]))
        if isinstance(node, exp.ApproxQuantile):
            return exp.Anonymous(this="quantile_cont", expressions=[node.this, node.args["quantile"]])
        if isinstance(node, exp.Anonymous) and node.name.lower() in _DUCKDB_RENAMES:
            return exp.Anonymous(this=_DUCKDB_RENAMES[node.name.lower()], expressions=node.expressions)
        return node

    return tree.transform(fix).sql(dialect="duckdb", pretty=True)


#: Aggregates whose floating-point result depends on the order of their inputs.
_ORDERED_AGGREGATES = (exp.Sum, exp.Avg, exp.StddevSamp, exp.Stddev, exp.StddevPop, exp.VariancePop, exp.Variance)

#: Trino functions sqlglot passes through untranslated, and their DuckDB names.
_DUCKDB_RENAMES = {"is_finite": "isfinite"}


class Engine(Protocol):
    """Runs a shipped query over the raw landing hours ``[arrival_start, arrival_end)``."""

    def run(self, name: str, params: dict[str, Any], arrival_start: datetime, arrival_end: datetime) -> pa.Table: ...


# --------------------------------------------------------------------------------------------
# DuckDB (local)
# --------------------------------------------------------------------------------------------


class DuckDBEngine:
    """DuckDB over S3 through an fsspec filesystem (httpfs is not needed).

    ``raw_lines`` is a view of ``read_text`` over the landing objects of the hours asked for, split
    into lines; the landing location comes from the Glue table, as on Athena.
    """

    def __init__(self, fs: Any, raw_location: str):
        self.fs = fs
        self.raw_location = raw_location.rstrip("/") + "/"
        self._cached: tuple[tuple[datetime, datetime], pa.Table] | None = None

    def landing_objects(self, arrival_start: datetime, arrival_end: datetime) -> list[str]:
        base = self.raw_location.removeprefix("s3://")
        keys: list[str] = []
        for hour in hour_range(arrival_start, arrival_end):
            prefix = f"{base}{hour_key(hour)}/"
            try:
                found = self.fs.ls(prefix, detail=False, refresh=True)
            except FileNotFoundError:
                continue
            keys.extend(k for k in sorted(found) if not k.endswith("/"))
        return keys

    def raw_lines(self, arrival_start: datetime, arrival_end: datetime) -> pa.Table:
        """(source_key, arrival_hour, line) for every line landed in the hours, fetched concurrently
        (and kept for the next query over the same hours)."""
        if self._cached and self._cached[0] == (arrival_start, arrival_end):
            return self._cached[1]
        files = self.landing_objects(arrival_start, arrival_end)
        bodies = self.fs.cat(files) if files else {}
        start = len(self.raw_location.removeprefix("s3://"))
        # Undecodable bytes become U+FFFD: the line then fails to parse and is set aside.
        objects = pa.array([bodies[path].decode("utf-8", errors="replace") for path in files], pa.large_string())
        split = pc.split_pattern(objects, "\n")
        owner = pc.list_parent_indices(split)
        table = pa.table({
            "source_key": pc.take(pa.array([f"s3://{path}" for path in files], pa.string()), owner),
            "arrival_hour": pc.take(pa.array([path[start : start + 13] for path in files], pa.string()), owner),
            "line": pc.list_flatten(split),
        })
        self._cached = ((arrival_start, arrival_end), table)
        return table

    def run(self, name: str, params: dict[str, Any], arrival_start: datetime, arrival_end: datetime) -> pa.Table:
        return run_duckdb(name, params, self.raw_lines(arrival_start, arrival_end))


def run_duckdb(name: str, params: dict[str, Any], raw_lines: pa.Table) -> pa.Table:
    """Run shipped query ``name``, translated to DuckDB, over an in-memory ``raw_lines`` table."""
    import duckdb

    con = duckdb.connect(config={"threads": 1})  # one thread: float sums identical run to run
    try:
        con.execute("SET TimeZone='UTC'")
        con.register("raw_lines", raw_lines)
        sql = to_duckdb(render(name, params))
        try:
            return con.sql(sql).to_arrow_table()
        except duckdb.Error as err:
            raise QueryError(f"DuckDB failed on query {name}: {err}") from err
    finally:
        con.close()


# --------------------------------------------------------------------------------------------
# Athena (AWS)
# --------------------------------------------------------------------------------------------

_ATHENA_TYPES = {
    "varchar": pa.string(),
    "char": pa.string(),
    "bigint": pa.int64(),
    "integer": pa.int64(),
    "smallint": pa.int64(),
    "tinyint": pa.int64(),
    "double": pa.float64(),
    "float": pa.float64(),
    "real": pa.float64(),
    "boolean": pa.bool_(),
}


@dataclass
class AthenaEngine:
    """Athena through the Amazon provider's hook (or any object with its three methods).

    Results are read with GetQueryResults pages; the aggregation returns at most a few rows per
    series and bucket, so no result file needs parsing.
    """

    hook: Any
    database: str
    raw_table: str
    workgroup: str = "primary"
    poll_seconds: float = 2.0
    max_polling_attempts: int = 900

    def run(self, name: str, params: dict[str, Any], arrival_start: datetime, arrival_end: datetime) -> pa.Table:
        source = substitute(
            sql_text("athena_raw_lines"),
            {
                "database": self.database,
                "raw_table": self.raw_table,
                "arrival_start": hour_key(arrival_start),
                "arrival_end": hour_key(arrival_end),
            },
        )
        sql = render(name, params, sources={"raw_lines": source}).sql(dialect="trino", pretty=True)
        query_id = self.hook.run_query(
            query=sql,
            query_context={"Database": self.database},
            result_configuration={},
            workgroup=self.workgroup,
        )
        state = self.hook.poll_query_status(query_id, max_polling_attempts=self.max_polling_attempts, sleep_time=self.poll_seconds)
        if state != "SUCCEEDED":
            reason = self.hook.get_state_change_reason(query_id)
            raise QueryError(f"Athena query {name} ({query_id}) ended {state}: {reason}")
        return athena_pages_to_table(self.hook.get_query_results_paginator(query_id))


def athena_pages_to_table(pages: Any) -> pa.Table:
    """Turn GetQueryResults pages (strings plus column metadata) into a typed Arrow table."""
    columns: list[tuple[str, str]] | None = None
    rows: list[list[str | None]] = []
    first = True
    for page in pages:
        result = page["ResultSet"]
        if columns is None:
            columns = [(c["Name"], c["Type"]) for c in result["ResultSetMetadata"]["ColumnInfo"]]
        for row in result["Rows"]:
            values = [d.get("VarCharValue") for d in row["Data"]]
            if first:
                first = False
                if values == [c[0] for c in columns]:
                    continue  # header row
            rows.append(values)
    if columns is None:
        return pa.table({})
    arrays = {}
    for i, (col, type_name) in enumerate(columns):
        target = _ATHENA_TYPES.get(type_name.lower(), pa.string())
        raw = pa.array([r[i] for r in rows], type=pa.string())
        arrays[col] = raw.cast(target) if target != pa.string() else raw
    return pa.table(arrays)


def hour_range(start: datetime, end: datetime) -> list[datetime]:
    """Every hour from ``start`` (inclusive) to ``end`` (exclusive)."""
    from datetime import timedelta

    out = []
    t = start
    while t < end:
        out.append(t)
        t += timedelta(hours=1)
    return out
