"""The comparison's evidence read back for the forewarn page, quickly at 10,000 series.

Each evidence object (``compare/dt=…/HHMM.parquet``: a row per series, metric and judged
bucket) is parsed once into compact columns, each row's ``(series, metric)`` a number in a
table shared by every object read, and kept in memory by key and ETag: the comparison writes an
interval's object once, and a rerun rewrites it under the same key with a new ETag, which is
then read again. The page ranks every series from those columns (``Window.stats``) and builds
rows only for the series it draws (``Window.rows``). A stretch longer than the memory holds
(a series' days of history) is read object by object, eight at a time, keeping only the rows
of the series asked for (``series_rows``), or, for a day ``compact_day`` has compacted and whose
objects have not changed since, from the day's one part that holds the series.

**Days compacted.** ``forewarn_train`` (daily) compacts the three days before it
(``compact_day``): every evidence object of a day, regrouped into ``DAY_PARTS`` parts by the
series' comparison-shard hash (a roll-up with its series), each sorted by series, metric and
bucket, with the interval each row came from (the rows streamed to the parts as each object is
read, each part then sorted on its own); and a manifest of the objects and ETags it read and the parts it
wrote, written last. A day whose objects the manifest does not match (a rerun, a backfill, an interval
compared after the compaction) is read object by object, as before.
"""

from __future__ import annotations

import io
import json
import threading
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from forewarn.layout import EVIDENCE_PREFIX, evidence_time, shard_of

#: The evidence columns the page reads (the others are not drawn).
COLUMNS = ("series", "metric", "bucket_start", "actual", "mean", "lower_95", "upper_95", "likelihood", "anomalous")
VALUES = ("actual", "mean", "lower_95", "upper_95", "likelihood")
#: Memory the parsed objects may take, the least recently used dropped first: six hours of
#: 10,000 series x 2 metrics take about 80 MB.
CACHE_BYTES = 320 * 2**20
#: Evidence objects fetched at a time.
READERS = 16
#: Where ``compact_day`` writes a day's evidence regrouped by series, and in how many parts.
DAYS_PREFIX = "compare/days/"
DAY_PARTS = 64


#: A ``(series, metric)`` is numbered ``series number x METRIC_SLOTS + metric number``: the
#: comparison judges a handful of metrics (``config.METRICS``).
METRIC_SLOTS = 16


class Keys:
    """Every series and metric seen, numbered in the order first seen; a ``(series, metric)``
    is ``series number x METRIC_SLOTS + metric number``."""

    def __init__(self) -> None:
        self.series_no: dict[str, int] = {}
        self.metric_no: dict[str, int] = {}
        self.series: list[str] = []
        self.metrics: list[str] = []
        self.lock = threading.Lock()
        self._recent: list[tuple[str, Any, np.ndarray]] = []  # (kind, names, their numbers) numbered lately

    @staticmethod
    def _add(names: list[str], numbers: dict[str, int], listed: list[str], limit: int | None = None) -> np.ndarray:
        found = [numbers.get(name) for name in names]
        if None in found:
            for i, name in enumerate(names):
                if found[i] is None:
                    if limit is not None and len(listed) >= limit:
                        raise ValueError(f"more than {limit} metrics in the evidence ({', '.join(listed)}, {name}, …)")
                    found[i] = numbers.setdefault(name, len(listed))
                    if found[i] == len(listed):
                        listed.append(name)
        return np.asarray(found, dtype=np.int64)

    def numbers(self, series: Any, metrics: Any) -> tuple[np.ndarray, np.ndarray]:
        """The numbers of the names in the Arrow arrays ``series`` and ``metrics`` (distinct
        names each: a dictionary's), new ones added. The intervals of a day name the same
        series: an array equal to one numbered lately is not looked up again."""
        with self.lock:
            out = []
            for kind, names, numbers, listed, limit in (("series", series, self.series_no, self.series, None),
                                                        ("metric", metrics, self.metric_no, self.metrics, METRIC_SLOTS)):
                found = next((n for k, seen, n in self._recent if k == kind and seen.equals(names)), None)
                if found is None:
                    found = self._add(names.to_numpy(zero_copy_only=False).tolist(), numbers, listed, limit)
                    self._recent = [(kind, names, found), *self._recent[:5]]
                out.append(found)
            return out[0], out[1]

    def known(self, pairs: Iterable[tuple[str, str]]) -> np.ndarray:
        """The numbers of those of ``pairs`` seen so far."""
        out = []
        for series, metric in pairs:
            s, m = self.series_no.get(series), self.metric_no.get(metric)
            if s is not None and m is not None:
                out.append(s * METRIC_SLOTS + m)
        return np.asarray(out, dtype=np.int64)

    def under(self, series: str) -> np.ndarray:
        """The numbers of ``series`` and of every series named ``<series>/…`` (its roll-ups), with any metric."""
        prefix = series + "/"
        with self.lock:
            names = list(self.series)
        found = np.asarray([i for i, s in enumerate(names) if s == series or s.startswith(prefix)], dtype=np.int64)
        return (found[:, None] * METRIC_SLOTS + np.arange(METRIC_SLOTS)).ravel()

    def names(self, ids: np.ndarray) -> tuple[list[str], list[str]]:
        """The series and metric of each number."""
        with self.lock:
            series, metrics = list(self.series), list(self.metrics)
        s_no, m_no = np.divmod(np.asarray(ids, dtype=np.int64), METRIC_SLOTS)
        return [series[i] for i in s_no.tolist()], [metrics[i] for i in m_no.tolist()]


@dataclass
class Part:
    """One evidence object's rows: ``ids`` number their ``(series, metric)`` in a ``Keys``;
    ``stamps`` are bucket starts in nanoseconds since the epoch (UTC)."""

    ids: np.ndarray
    stamps: np.ndarray
    values: dict[str, np.ndarray]
    anomalous: np.ndarray
    _summary: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def summary(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Its distinct ``(series, metric)`` numbers, each one's highest likelihood (-inf when
        none is known) and latest anomalous bucket (0 when none was): computed once."""
        if self._summary is None:
            ids, inverse = np.unique(self.ids, return_inverse=True)
            peak = np.full(len(ids), -np.inf)
            np.fmax.at(peak, inverse, self.values["likelihood"])
            latest = np.zeros(len(ids), np.int64)
            flagged = self.anomalous != 0
            np.maximum.at(latest, inverse[flagged], self.stamps[flagged])
            self._summary = (ids, peak, latest)
        return self._summary

    @property
    def nbytes(self) -> int:
        return self.ids.nbytes + self.stamps.nbytes + self.anomalous.nbytes + sum(v.nbytes for v in self.values.values())

    def take(self, mask: np.ndarray) -> Part:
        return Part(self.ids[mask], self.stamps[mask], {k: v[mask] for k, v in self.values.items()}, self.anomalous[mask])


def _empty() -> Part:
    return Part(np.empty(0, np.int64), np.empty(0, np.int64), {c: np.empty(0) for c in VALUES}, np.empty(0, np.int8))


def part_of_table(table: Any, keys: Keys) -> Part:
    """A ``Part`` from an Arrow table of evidence (the series and metric columns dictionary-
    encoded or not; an interval with nothing judged has only a ``series`` column)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if table.num_rows == 0 or not {"series", "metric", "bucket_start"} <= set(table.column_names):
        return _empty()
    codes, names = [], []
    for column in ("series", "metric"):
        encoded = table.column(column).combine_chunks()
        if not pa.types.is_dictionary(encoded.type):
            encoded = pc.dictionary_encode(encoded)
        codes.append(encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64))
        names.append(encoded.dictionary)
    series_no, metric_no = keys.numbers(names[0], names[1])
    ids = series_no[codes[0]] * METRIC_SLOTS + metric_no[codes[1]]
    stamps = table.column("bucket_start").cast(pa.timestamp("ns", tz="UTC")).cast(pa.int64()).to_numpy()
    values = {c: (table.column(c).cast(pa.float64()).to_numpy() if c in table.column_names else np.full(table.num_rows, np.nan))
              for c in VALUES}
    anomalous = (table.column("anomalous").fill_null(0).cast(pa.int8()).to_numpy() if "anomalous" in table.column_names
                 else np.zeros(table.num_rows, np.int8))
    return Part(ids, np.asarray(stamps, dtype=np.int64), values, np.asarray(anomalous, dtype=np.int8))


@dataclass
class Window:
    """The evidence of a stretch of compared intervals: its parts, oldest first."""

    parts: list[Part]
    keys: Keys = field(default_factory=Keys)

    @classmethod
    def of_frame(cls, frame: pd.DataFrame | None) -> Window:
        """A window of one part from evidence rows already in a DataFrame."""
        import pyarrow as pa

        keys = Keys()
        if frame is None or not len(frame):
            return cls([], keys)
        table = pa.Table.from_pandas(frame[[c for c in COLUMNS if c in frame]], preserve_index=False)
        return cls([part_of_table(table, keys)], keys)

    def _all(self) -> Part:
        if not self.parts:
            return _empty()
        if len(self.parts) == 1:
            return self.parts[0]
        return Part(np.concatenate([p.ids for p in self.parts]), np.concatenate([p.stamps for p in self.parts]),
                    {c: np.concatenate([p.values[c] for p in self.parts]) for c in VALUES},
                    np.concatenate([p.anomalous for p in self.parts]))

    def stats(self) -> pd.DataFrame:
        """Per ``(series, metric)`` of the window, indexed by its number: ``series``, ``metric``,
        ``peak`` (the highest anomaly likelihood, 0 when none is known) and ``latest`` (the
        latest anomalous bucket, ns since the epoch; 0 when none was)."""
        summaries = [p.summary() for p in self.parts if len(p.ids)]
        if not summaries:
            return pd.DataFrame({"series": pd.Series(dtype=object), "metric": pd.Series(dtype=object),
                                 "peak": pd.Series(dtype=float), "latest": pd.Series(dtype=np.int64)})
        size = max(int(ids[-1]) for ids, _, _ in summaries) + 1
        seen = np.zeros(size, bool)
        peak = np.full(size, -np.inf)
        latest = np.zeros(size, np.int64)
        for ids, top, last in summaries:  # each part's numbers are distinct: plain indexing
            seen[ids] = True
            peak[ids] = np.fmax(peak[ids], top)
            latest[ids] = np.maximum(latest[ids], last)
        ids = np.flatnonzero(seen)
        series, metric = self.keys.names(ids)
        return pd.DataFrame({"series": series, "metric": metric, "peak": np.where(np.isfinite(peak[ids]), peak[ids], 0.0),
                             "latest": latest[ids]}, index=ids)

    def anomalous_buckets(self) -> int:
        return int(sum(int((p.anomalous != 0).sum()) for p in self.parts))

    def rows(self, ids: np.ndarray | Iterable[int]) -> pd.DataFrame:
        """The evidence rows of the ``(series, metric)`` numbered ``ids``, in window order."""
        ids = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64)
        taken = [p.take(np.isin(p.ids, ids)) for p in self.parts] if len(ids) else []
        return frame_of(Window(taken, self.keys)._all(), self.keys)


def frame_of(part: Part, keys: Keys) -> pd.DataFrame:
    """A part's rows as a DataFrame of the evidence's columns (bucket starts as UTC times)."""
    series, metric = keys.names(part.ids)
    return pd.DataFrame({"series": pd.Series(series, dtype=object), "metric": pd.Series(metric, dtype=object),
                         "bucket_start": pd.to_datetime(part.stamps, unit="ns", utc=True), **part.values,
                         "anomalous": part.anomalous.astype(int)}, columns=list(COLUMNS))


class EvidenceCache:
    """Parsed evidence objects by (bucket, key, ETag), least recently used dropped first once
    they take more than ``max_bytes``; safe to share between a server's threads."""

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self.keys = Keys()
        self.max_bytes = max_bytes
        self.parts: OrderedDict[tuple[str, str, str], Part] = OrderedDict()
        self.size = 0
        self.lock = threading.Lock()
        self.stats = {"hits": 0, "reads": 0}

    def get(self, bucket: str, key: str, etag: str) -> Part | None:
        with self.lock:
            part = self.parts.get((bucket, key, etag))
            if part is not None:
                self.parts.move_to_end((bucket, key, etag))
                self.stats["hits"] += 1
            return part

    def put(self, bucket: str, key: str, etag: str, part: Part) -> None:
        with self.lock:
            if (bucket, key, etag) in self.parts:
                return
            self.parts[(bucket, key, etag)] = part
            self.size += part.nbytes
            while self.size > self.max_bytes and len(self.parts) > 1:
                _, dropped = self.parts.popitem(last=False)
                self.size -= dropped.nbytes

    def clear(self) -> None:
        with self.lock:
            self.parts.clear()
            self.size = 0

    def window(self, s3: Any, bucket: str, objects: list[tuple[str, str]]) -> Window:
        """The parts of ``objects`` ((key, ETag), oldest first): kept ones, the rest read and kept."""

        def one(obj: tuple[str, str]) -> Part:
            key, etag = obj
            part = self.get(bucket, key, etag)
            if part is None:
                table, etag = _read_table(s3, bucket, key, dictionary=True)
                part = part_of_table(table, self.keys)
                self.stats["reads"] += 1
                self.put(bucket, key, etag, part)
            return part

        return Window(_map(one, objects), self.keys)

    def series_rows(self, s3: Any, bucket: str, objects: list[tuple[str, str]], series: str, keep_after: datetime | None = None
                    ) -> pd.DataFrame:
        """The evidence rows of ``series`` and of its roll-ups (``<series>/…``) in ``objects``:
        from the kept parts, else read (and kept when the interval starts after ``keep_after``,
        else only those rows taken)."""
        import pyarrow.compute as pc

        def one(obj: tuple[str, str]) -> Part | pd.DataFrame:
            key, etag = obj
            part = self.get(bucket, key, etag)
            if part is None and keep_after is not None and evidence_time(key) > keep_after:
                table, etag = _read_table(s3, bucket, key, dictionary=True)
                part = part_of_table(table, self.keys)
                self.stats["reads"] += 1
                self.put(bucket, key, etag, part)
            if part is not None:
                return part
            table, _ = _read_table(s3, bucket, key, dictionary=False)
            self.stats["reads"] += 1
            if table.num_rows == 0 or "bucket_start" not in table.column_names:
                return pd.DataFrame(columns=list(COLUMNS))
            names = table.column("series")
            mine = table.filter(pc.or_(pc.equal(names, series), pc.starts_with(names, series + "/")))
            return frame_of(part_of_table(mine, self.keys), self.keys)

        by_day: dict[date, list[tuple[str, str]]] = {}
        for obj in objects:
            by_day.setdefault(evidence_time(obj[0]).date(), []).append(obj)
        compacted = _map(lambda item: _from_day_part(s3, bucket, item[0], item[1], series), list(by_day.items()))
        from_parts = [f for f in compacted if f is not None]
        rest = [obj for (day, objs), f in zip(by_day.items(), compacted, strict=True) if f is None for obj in objs]
        self.stats["day_parts"] = self.stats.get("day_parts", 0) + len(from_parts)
        found = from_parts + _map(one, rest)
        ids = self.keys.under(series)
        frames = [frame_of(f.take(np.isin(f.ids, ids)), self.keys) if isinstance(f, Part) else f for f in found]
        frames = [f for f in frames if len(f)]
        if not frames:
            return pd.DataFrame(columns=list(COLUMNS))
        out = pd.concat(frames, ignore_index=True)
        return out.sort_values("bucket_start", kind="stable", ignore_index=True) if len(from_parts) else out


def day_part_key(day: date, part: int) -> str:
    return f"{DAYS_PREFIX}dt={day:%Y-%m-%d}/part={part:03d}.parquet"


def day_manifest_key(day: date) -> str:
    return f"{DAYS_PREFIX}dt={day:%Y-%m-%d}/_manifest.json"


def _from_day_part(s3: Any, bucket: str, day: date, objects: list[tuple[str, str]], series: str) -> pd.DataFrame | None:
    """The rows of ``series`` (and its roll-ups) that ``objects`` hold, from the day's compacted
    part; None when the day has no manifest or it does not list every one of ``objects`` with the
    same ETag (read them one by one)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        manifest = json.loads(s3.get_object(Bucket=bucket, Key=day_manifest_key(day))["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None
    listed = manifest.get("objects", {})
    if any(listed.get(key) != etag for key, etag in objects):
        return None
    part = shard_of(series, DAY_PARTS)
    if "parts" in manifest and part not in manifest["parts"]:
        return pd.DataFrame(columns=list(COLUMNS))  # no series of that part had a row that day
    try:
        body = s3.get_object(Bucket=bucket, Key=day_part_key(day, part))["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None  # being rewritten: the objects themselves
    table = pq.read_table(io.BytesIO(body), columns=[*(c for c in COLUMNS if c in pq.read_schema(io.BytesIO(body)).names), "interval"])
    names = table.column("series")
    intervals = pa.array([evidence_time(key) for key, _ in objects], pa.timestamp("us", tz="UTC"))
    mine = pc.and_(pc.or_(pc.equal(names, series), pc.starts_with(names, series + "/")),
                   pc.is_in(table.column("interval").cast(pa.timestamp("us", tz="UTC")), value_set=intervals))
    rows = table.filter(mine).drop_columns(["interval"]).to_pandas()
    for column in COLUMNS:
        if column not in rows:
            rows[column] = np.nan
    rows["anomalous"] = rows["anomalous"].fillna(0).astype(int)
    return rows[list(COLUMNS)]


def compact_day(s3: Any, bucket: str, day: date) -> dict[str, Any]:
    """Regroup a day's evidence objects by series into ``DAY_PARTS`` parts (``DAYS_PREFIX``) and
    write the manifest of what was read last; nothing is written when the manifest already lists
    the day's objects as they are. Returns what was done."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    objects = list_evidence(s3, bucket, start=start, end=start + timedelta(days=1) - timedelta(seconds=1))
    want = dict(objects)
    try:
        if json.loads(s3.get_object(Bucket=bucket, Key=day_manifest_key(day))["Body"].read()).get("objects") == want:
            return {"day": day.isoformat(), "objects": len(want), "parts": 0, "fresh": True}
    except s3.exceptions.NoSuchKey:
        pass
    # each object's rows go to their parts' writers as they are read (a row group each): memory
    # holds the compressed parts and one object, not the day
    writers: dict[int, tuple[Any, io.BytesIO]] = {}
    schema = None
    read_etags = {}
    for key, _ in objects:
        resp = s3.get_object(Bucket=bucket, Key=key)
        table, read_etags[key] = pq.read_table(io.BytesIO(resp["Body"].read())), resp["ETag"]
        if table.num_rows == 0 or "bucket_start" not in table.column_names:
            continue
        table = table.append_column("interval", pa.array([evidence_time(key)] * table.num_rows, pa.timestamp("us", tz="UTC")))
        schema = schema or table.schema
        if table.schema != schema:  # an object of an older layout: the first one's columns, nulls for those it lacks
            table = pa.table({f.name: (table.column(f.name).cast(f.type) if f.name in table.column_names
                                       else pa.nulls(table.num_rows, f.type)) for f in schema}, schema=schema)
        encoded = pc.dictionary_encode(table.column("series").combine_chunks())
        of_name = np.asarray([shard_of(str(name), DAY_PARTS) for name in encoded.dictionary.to_pylist()], dtype=np.int64)
        part_no = of_name[encoded.indices.to_numpy(zero_copy_only=False)]
        for p in np.unique(part_no).tolist():
            if p not in writers:
                buffer = io.BytesIO()
                writers[p] = (pq.ParquetWriter(buffer, schema, compression="zstd"), buffer)
            writers[p][0].write_table(table.filter(pa.array(part_no == p)))
    written = []
    for p, (writer, buffer) in sorted(writers.items()):  # one part at a time: sorted by series, one row group
        writer.close()
        part = pq.read_table(io.BytesIO(buffer.getvalue())).sort_by(
            [("series", "ascending"), ("metric", "ascending"), ("bucket_start", "ascending"), ("interval", "ascending")])
        out = io.BytesIO()
        pq.write_table(part, out, compression="zstd")
        s3.put_object(Bucket=bucket, Key=day_part_key(day, p), Body=out.getvalue())
        written.append(day_part_key(day, p))
    prefix = f"{DAYS_PREFIX}dt={day:%Y-%m-%d}/"
    stale = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
             for o in page.get("Contents", []) if o["Key"].endswith(".parquet") and o["Key"] not in written]
    for i in range(0, len(stale), 1000):
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in stale[i:i + 1000]]})
    manifest = {"objects": read_etags, "parts": sorted(writers)}
    s3.put_object(Bucket=bucket, Key=day_manifest_key(day), Body=json.dumps(manifest, sort_keys=True).encode(),
                  ContentType="application/json")
    return {"day": day.isoformat(), "objects": len(read_etags), "parts": len(written), "fresh": False}


def _read_table(s3: Any, bucket: str, key: str, dictionary: bool) -> tuple[Any, str]:
    """The page's columns of one evidence object, and the ETag of what was read."""
    import pyarrow.parquet as pq

    resp = s3.get_object(Bucket=bucket, Key=key)
    source = pq.ParquetFile(io.BytesIO(resp["Body"].read()), read_dictionary=["series", "metric"] if dictionary else None)
    present = [c for c in COLUMNS if c in source.schema_arrow.names]
    return source.read(columns=present), resp["ETag"]


def _map(fn: Any, items: list[Any]) -> list[Any]:
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(min(READERS, len(items))) as pool:
        return list(pool.map(fn, items))


def list_evidence(s3: Any, bucket: str, hours: float | None = None, start: datetime | None = None, end: datetime | None = None,
                  limit: int | None = None) -> list[tuple[str, str]]:
    """(key, ETag) of the evidence objects, oldest first: of the intervals in the ``hours`` up
    to the newest one (only the newest days' partitions listed), or of those starting from
    ``start`` up to ``end``; the last ``limit`` of them."""
    paginator = s3.get_paginator("list_objects_v2")
    days = sorted(p["Prefix"] for page in paginator.paginate(Bucket=bucket, Prefix=EVIDENCE_PREFIX, Delimiter="/")
                  for p in page.get("CommonPrefixes", []))
    if start is not None or end is not None:
        lo = f"{EVIDENCE_PREFIX}{start:%Y-%m-%d}/" if start is not None else ""
        hi = f"{EVIDENCE_PREFIX}{end:%Y-%m-%d}/" if end is not None else "~"
        days = [d for d in days if lo <= d <= hi]
    elif hours is not None:
        days = days[-(int(hours) // 24 + 2):]
    found: list[tuple[str, str]] = []
    for prefix in days:
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            found.extend((o["Key"], o.get("ETag", "")) for o in page.get("Contents", []) if o["Key"].endswith(".parquet"))
    found.sort()
    if found and start is None and end is None and hours is not None:
        first = evidence_time(found[-1][0]) - timedelta(hours=hours)
        found = [f for f in found if evidence_time(f[0]) > first]
    if start is not None or end is not None:
        found = [f for f in found if (start is None or evidence_time(f[0]) >= start) and (end is None or evidence_time(f[0]) <= end)]
    return found[-limit:] if limit else found


#: The page's parsed evidence, shared by its requests.
CACHE = EvidenceCache()
