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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlglot
from sqlglot import exp

from forewarn.layout import hour_key, shard_of

log = logging.getLogger(__name__)

_PARAM = re.compile(r"\$\{(\w+)\}")
_SAFE_TEXT = re.compile(r"^[A-Za-z0-9_./:\- ]*$")


class SqlCondition(str):
    """A boolean SQL expression this package composed from validated parts (the dimension
    catalog's values: ``forewarn.dimensions.kept_conditions``); ``substitute`` takes it as it is."""

    __slots__ = ()


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
        if isinstance(value, SqlCondition):
            return f"({text_value})"
        if isinstance(value, str) and not _SAFE_TEXT.match(text_value):
            raise ValueError(f"query parameter {key}={value!r} holds characters not allowed in SQL text")
        return text_value

    return _PARAM.sub(fill, text)


def render(name: str, params: dict[str, Any], sources: dict[str, str] | None = None,
           provided: set[str] | None = None) -> exp.Expression:
    """Parse query ``name`` (Trino) with its parameters; every relation it reads that names another
    shipped query, or one given in ``sources`` (name -> Trino SELECT text), becomes a ``WITH``
    clause of its own, once, however many times it is read (``classified_events`` reads
    ``parsed_lines`` twice: the engine parses each line once). Relations in ``provided`` are
    tables the engine holds (read as they are, not defined)."""
    params = dict(params)
    keep_sets = params.pop(GROUPING_SETS_PARAM, None)
    sources = dict(sources or {})
    known = (set(shipped_queries()) | set(sources)) - set(provided or ())
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
    if keep_sets is not None:
        keep_grouping_sets(main, keep_sets)
    return main


#: A ``render`` parameter (not a placeholder): the grouping sets of the query to keep, each the
#: frozenset of its columns besides those every set has (``keep_grouping_sets``).
GROUPING_SETS_PARAM = "grouping_sets"


def keep_grouping_sets(tree: exp.Expression, keep: set[frozenset[str]] | frozenset[frozenset[str]]) -> None:
    """Drop, in place, the grouping sets of ``tree``'s ``GROUPING SETS`` clauses whose columns,
    less the columns common to all of them, are not in ``keep`` (the set the common columns
    alone make is always kept): a query lists every set its slots allow and runs only those
    declared."""
    for clause in list(tree.find_all(exp.GroupingSets)):
        sets = [(node, frozenset(col.name for col in node.find_all(exp.Column))) for node in clause.expressions]
        common = frozenset.intersection(*(cols for _, cols in sets)) if sets else frozenset()
        kept = [(node, cols) for node, cols in sets if cols == common or (cols - common) in keep]
        clause.set("expressions", [node for node, _ in kept])
        dropped = set().union(*(cols for _, cols in sets)) - set().union(*(cols for _, cols in kept))
        select = clause.find_ancestor(exp.Select)
        if not dropped or select is None:
            continue
        # in its projections, a column no kept set groups by is NULL in every row and
        # grouping() of it 1 (engines refuse both as they are)
        for projection in select.expressions:
            for call in list(projection.find_all(exp.Grouping)):
                if {col.name for col in call.find_all(exp.Column)} <= dropped:
                    call.replace(exp.Literal.number(1))
            for col in list(projection.find_all(exp.Column)):
                if col.name in dropped:
                    col.replace(exp.Null())


def slot_params(keys: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``key1``..``key3``: the roll-up keys in their slots, an unused slot a key no event has."""
    return {f"key{i + 1}": (keys[i] if i < len(keys) else f"_unused{i + 1}") for i in range(3)}


def aggregate_query(settings: Any, catalog: Any = None, plan: Any = None) -> tuple[str, dict[str, Any]]:
    """The shipped query that aggregates events into series for these settings, and the
    parameters it needs beyond the window's: ``aggregate``, or with roll-ups declared
    (``FOREWARN_ROLLUPS`` and the per-series settings' ``rollups``: ``plan``, a
    ``dimensions.RollupPlan``; by default ``FOREWARN_ROLLUPS`` alone) ``aggregate_rollups``
    with the keys in its slots, only the dimension sets some series has kept, each series held
    to its own, and the values the dimension ``catalog`` keeps (the others count as
    ``__other__``; ``None``: every value kept, for tools and tests)."""
    from forewarn.dimensions import kept_conditions, rollup_plan

    plan = plan if plan is not None else rollup_plan(settings)
    if not plan.sets:
        return "aggregate", {}
    slot = {key: f"d{i + 1}" for i, key in enumerate(plan.keys)}
    params: dict[str, Any] = slot_params(plan.keys)
    params.update(kept_conditions(catalog, list(plan.keys)))
    params["rollups_for"] = plan.condition()
    params[GROUPING_SETS_PARAM] = frozenset(frozenset(slot[k] for k in keys) for keys in plan.sets)
    return "aggregate_rollups", params


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
    """Runs a shipped query over the raw landing hours ``[arrival_start, arrival_end)``; with
    ``shard``, it may leave out the series of other comparison shards (the caller filters)."""

    def run(self, name: str, params: dict[str, Any], arrival_start: datetime, arrival_end: datetime,
            shard: int | None = None) -> pa.Table: ...


# --------------------------------------------------------------------------------------------
# DuckDB (local)
# --------------------------------------------------------------------------------------------


class DuckDBEngine:
    """DuckDB over S3 through an fsspec filesystem (httpfs is not needed).

    ``raw_lines`` is every line of the landing objects of the hours asked for; the landing
    location comes from the Glue table, as on Athena. With ``parsed_location`` each landing object
    is parsed once (``parsed_lines.sql``, the same SQL), and its parsed lines kept there as Parquet
    (named by the object's key and ETag, so a rewritten object is parsed again): a 5-minute
    comparison reads up to two hours of landing, of which a few minutes are new.
    """

    def __init__(self, fs: Any, raw_location: str, parsed_location: str | None = None, shards: int = 1):
        self.fs = fs
        self.shards = max(1, int(shards))
        self.raw_location = raw_location.rstrip("/") + "/"
        self.parsed_location = parsed_location.rstrip("/") + "/" if parsed_location else None
        self._cached: tuple[dict[str, str], pa.Table] | None = None
        self._parsed: tuple[tuple[int, dict[str, str]], pa.Table] | None = None
        self.parsed_stats = {"objects_parsed": 0, "objects_reused": 0}

    def landing_objects(self, arrival_start: datetime, arrival_end: datetime) -> list[str]:
        return list(self._landing(arrival_start, arrival_end))

    def _landing(self, arrival_start: datetime, arrival_end: datetime) -> dict[str, str]:
        """Landing object path -> ETag, in key order, for the hours."""
        base = self.raw_location.removeprefix("s3://")
        found: dict[str, str] = {}
        for hour in hour_range(arrival_start, arrival_end):
            try:
                listed = self.fs.ls(f"{base}{hour_key(hour)}/", detail=True, refresh=True)
            except FileNotFoundError:
                continue
            for entry in sorted(listed, key=lambda e: e["name"]):
                if entry.get("type") != "directory" and not entry["name"].endswith("/"):
                    found[entry["name"]] = str(entry.get("ETag", "")).strip('"')
        return found

    def raw_lines(self, arrival_start: datetime, arrival_end: datetime) -> pa.Table:
        """(source_key, arrival_hour, line) for every line landed in the hours, fetched concurrently
        (and kept for the next query over the same hours)."""
        landing = self._landing(arrival_start, arrival_end)
        if self._cached and self._cached[0] == landing:  # the same objects as the query before
            return self._cached[1]
        table = self._lines_of(list(landing))
        self._cached = (landing, table)
        return table

    def _lines_of(self, files: list[str]) -> pa.Table:
        """(source_key, arrival_hour, line) of the objects, fetched concurrently, split in Arrow."""
        bodies = self.fs.cat(files) if files else {}
        start = len(self.raw_location.removeprefix("s3://"))
        # Undecodable bytes become U+FFFD, as Athena reads them: parsed_lines.sql sets such a line aside.
        objects = pa.array([bodies[path].decode("utf-8", errors="replace") for path in files], pa.large_string())
        split = pc.split_pattern(objects, "\n")
        owner = pc.list_parent_indices(split)
        return pa.table({
            "source_key": pc.take(pa.array([f"s3://{path}" for path in files], pa.string()), owner),
            "arrival_hour": pc.take(pa.array([path[start : start + 13] for path in files], pa.string()), owner),
            "line": pc.list_flatten(split),
        })

    def parsed_lines(self, params: dict[str, Any], arrival_start: datetime, arrival_end: datetime,
                     lines: bool = True, shard: int | None = None) -> pa.Table:
        """``parsed_lines`` of every landing object of the hours: kept ones read, new ones parsed
        (by ``parsed_lines.sql``) and kept. Each object's parsed fields are kept per comparison
        shard (series hashed as the comparison hashes them) and its raw lines apart, so a
        shard's comparison reads only its own series' fields — a fifth of the bytes with one
        shard, less with more — and gets a null ``line``; ``rejects`` reads every shard and the
        lines. ``shard`` (with ``shards`` > 1): only that shard's series."""
        if self.parsed_location is None:
            raise ValueError("this engine keeps no parsed lines (no parsed_location)")
        if shard is not None and lines:
            raise ValueError("the raw lines are read for every shard at once (shard=None)")
        n = self.shards
        shard = shard if n > 1 else None
        lookback = int(params["lookback_hours"])
        landing = self._landing(arrival_start, arrival_end)
        if self._parsed and self._parsed[0] == (lookback, landing, lines, shard):  # the same objects as the query before
            return self._parsed[1]
        base = self.raw_location.removeprefix("s3://")
        kept_base = f"{self.parsed_location.removeprefix('s3://')}v{PARSED_VERSION}/lookback={lookback}/"
        tag = "" if n == 1 else f".of-{n:03d}"
        kept_at = {path: f"{kept_base}{path[len(base):]}.{etag or 'none'}{tag}" for path, etag in landing.items()}

        def fields_at(path: str, k: int) -> str:
            return kept_at[path] + (f".shard-{k:03d}" if n > 1 else "") + FIELDS_SUFFIX

        existing: set[str] = set()
        for folder in sorted({k.rsplit("/", 1)[0] for k in kept_at.values()}):
            try:
                existing.update(self.fs.ls(folder, detail=False, refresh=True))
            except FileNotFoundError:
                continue
        # every one of an object's files, or it is parsed again: the lifecycle rule expires them
        # one by one, in no order
        def kept(path: str) -> bool:
            return kept_at[path] + LINES_SUFFIX in existing and all(fields_at(path, k) in existing for k in range(n))

        reuse = [p for p in landing if kept(p)]
        parse = [p for p in landing if not kept(p)]
        wanted_shards = range(n) if shard is None else [shard]
        parts: dict[str, pa.Table] = {}
        if reuse:
            wanted = [fields_at(p, k) for p in reuse for k in wanted_shards] + ([kept_at[p] + LINES_SUFFIX for p in reuse] if lines else [])
            bodies = self.fs.cat(wanted)
            for path in reuse:
                fields = pa.concat_tables([pq.read_table(pa.BufferReader(bodies[fields_at(path, k)])) for k in wanted_shards])
                line = (pq.read_table(pa.BufferReader(bodies[kept_at[path] + LINES_SUFFIX])).column("line") if lines
                        else pa.nulls(fields.num_rows, pa.large_string()))
                parts[path] = fields.add_column(2, "line", line).cast(PARSED_SCHEMA)
        for at in range(0, len(parse), PARSE_CHUNK):  # a few objects at a time: memory stays bounded
            chunk = parse[at : at + PARSE_CHUNK]
            fresh = run_duckdb("parsed_lines", params, self._lines_of(chunk)).cast(PARSED_SCHEMA)
            owner = fresh.column("source_key")
            first, rest = {}, {}
            for path in chunk:
                part = fresh.filter(pc.equal(owner, f"s3://{path}"))
                of = shard_index(part.column("series"), n)
                if n > 1:  # the lines in shard order, so every shard's fields in turn line up with them
                    order = pc.sort_indices(of)  # stable
                    part, of = part.take(order), pc.take(of, order)
                rest[kept_at[path] + LINES_SUFFIX] = _parquet(part.select(["line"]))
                fields = part.drop_columns(["line"])
                for k in range(n):
                    (first if k == 0 else rest)[fields_at(path, k)] = _parquet(fields.filter(pc.equal(of, k)) if n > 1 else fields)
                if shard is not None:
                    part = part.filter(pc.equal(of, shard))
                parts[path] = part if lines else part.set_column(2, "line", pa.nulls(part.num_rows, pa.large_string()))
            self.fs.pipe(rest)
            self.fs.pipe(first)
        self.parsed_stats["objects_parsed"] += len(parse)
        self.parsed_stats["objects_reused"] += len(reuse)
        table = pa.concat_tables([parts[p] for p in landing]) if landing else PARSED_SCHEMA.empty_table()
        self._parsed = ((lookback, landing, lines, shard), table)
        return table

    def run(self, name: str, params: dict[str, Any], arrival_start: datetime, arrival_end: datetime,
            shard: int | None = None) -> pa.Table:
        """Shipped query ``name`` over the landing hours; ``shard``: over that comparison shard's
        series only (where the engine keeps parsed lines; otherwise the caller filters)."""
        if self.parsed_location is None or name == "parsed_lines":
            return run_duckdb(name, params, self.raw_lines(arrival_start, arrival_end))
        shows = name in SHOWS_LINES
        kept = self.parsed_lines(params, arrival_start, arrival_end, lines=shows, shard=None if shows else shard)
        return run_duckdb(name, params, relations={"parsed_lines": kept})


def shard_index(series: pa.ChunkedArray | pa.Array, shards: int) -> pa.Array:
    """Each row's comparison shard (``layout.shard_of`` of its series; 0 for a missing one),
    hashing each distinct name once."""
    if shards <= 1:
        return pa.array(np.zeros(len(series), dtype=np.int32))
    names = pc.unique(series)
    of = pa.array([shard_of(name, shards) if name is not None else 0 for name in names.to_pylist()], pa.int32())
    out = pc.fill_null(pc.take(of, pc.index_in(series, value_set=names)), 0)
    return out.combine_chunks() if isinstance(out, pa.ChunkedArray) else out


#: Landing objects parsed in one DuckDB query (a minute of arrivals each, Firehose's buffer): a
#: first comparison, which parses the hour before it too, holds a few of them at a time.
PARSE_CHUNK = 8
#: The shipped queries whose output carries the raw line (the others never look at it).
SHOWS_LINES = frozenset({"rejects", "classified_events", "parsed_lines"})
#: A landing object's kept parsed fields, and its raw lines in the same order.
FIELDS_SUFFIX, LINES_SUFFIX = ".fields.parquet", ".lines.parquet"


def _parquet(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


#: The layout or the rules of the kept parsed fields: a new one (a column added, a rule changed)
#: is kept apart from the old, which are then never read (version 2: ``dimensions``; version 3:
#: an ``event_time`` needs an offset; version 4: a leading byte order mark skipped, a blank
#: ``event_id`` and JSON that is no object refused, offsets within ±14:00; version 5: a line of
#: JSON whitespace is blank, one of other white space ``invalid_json``; an ``event_id`` that is
#: no string, or too long, ``bad_event_id``; a bare ``NaN`` or ``Infinity``, or a trailing comma,
#: ``invalid_json``; version 6: an ``event_id`` that is an integer of at most 15 digits is
#: accepted again, as the string of its digits; version 7: a series that is no JSON string, a
#: value string that is no JSON number, a time or date no clock shows, a line read with U+FFFD
#: or holding half a surrogate pair are refused). ``tests/test_sql.py`` keeps a digest of
#: ``parsed_lines.sql`` per version, so a rule cannot change without a new one.
PARSED_VERSION = 7
#: ``parsed_lines.sql``'s columns as kept for each landing object.
PARSED_SCHEMA = pa.schema([
    ("source_key", pa.string()), ("arrival_hour", pa.string()), ("line", pa.large_string()), ("event_id", pa.string()),
    ("series", pa.string()), ("event_epoch", pa.float64()), ("value", pa.float64()), ("dimensions", pa.string()),
    ("base_reason", pa.string()),
])


def run_duckdb(name: str, params: dict[str, Any], raw_lines: pa.Table | None = None,
               relations: dict[str, pa.Table] | None = None) -> pa.Table:
    """Run shipped query ``name``, translated to DuckDB, over an in-memory ``raw_lines`` table
    (or ``relations``: tables standing for the shipped queries of those names)."""
    import duckdb

    given = dict(relations or {})
    if raw_lines is not None:
        given["raw_lines"] = raw_lines
    con = duckdb.connect(config={"threads": 1})  # one thread: float sums identical run to run
    try:
        con.execute("SET TimeZone='UTC'")
        for relation, table in given.items():
            con.register(relation, table)
        sql = to_duckdb(render(name, params, provided=set(given)))
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

    def run(self, name: str, params: dict[str, Any], arrival_start: datetime, arrival_end: datetime,
            shard: int | None = None) -> pa.Table:
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
