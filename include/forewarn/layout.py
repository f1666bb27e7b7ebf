"""Where every object forewarn reads or writes lives in the bucket: one function per kind of
object, used by the DAGs' code, the forewarn page and the demo alike.

    raw/YYYY/MM/DD/HH/…                              Firehose landings (arrival hour, UTC)
    aggregates/dt=YYYY-MM-DD/hour=HH/part-0.parquet  one row per series x bucket (event hour)
    errors/rejected/YYYY/MM/DD/HH/rejects.jsonl      records set aside, with their reason (arrival hour)
    state/aggregate/<window>.json                    an aggregation window's summary
    state/dimensions/catalog.json                    the roll-up values kept per dimension key (``forewarn.dimensions``)
    forecasts/run=YYYY-MM-DDTHH/…                    one training run (see ``forewarn.train``)
    state/compare/<end>.arrow                        detector and episode state after an interval (live runs;
                                                     <end>.json.gz and <end>.json as earlier versions wrote it)
    state/compare-backfill/<end>.arrow               the same, written by backfill runs (their own chain)
    state/kinesis/<end>.json                         Kinesis shard checkpoints after an interval
    compare/dt=YYYY-MM-DD/HHMM.parquet               an interval's evidence (every judged bucket)
    compare/days/dt=YYYY-MM-DD/part=NNN.parquet      a day's evidence by series (``forewarn.evidence.compact_day``)
    state/parsed/vN/lookback=L/<landing key>.<etag>…    a landing object's parsed fields (per shard) and raw lines (N: ``query.PARSED_VERSION``)
    incidents/<token>.json                           what each sink was told of one episode
    incidents/open/<token>                           marker of an episode that is open in the sinks
    episodes/started=YYYY-MM-DD/<token>.json         an episode's span, kept out of training
    labels/<hash>.json                               an operator's label (``forewarn.labels``)
    maintenance/<hash>.json                          a maintenance window or snooze (``forewarn.maintenance``)
    settings/series.yaml                             per-series settings (``series_settings_key``)

With ``compare_shards`` > 1 each comparison shard keeps its own state chain under
``state/compare[-backfill]/shard=NNN/`` and writes its evidence as ``HHMM-shard=NNN.parquet``.

Every key is a function of the data interval (or the episode), never of the wall clock, so a
rerun or a backfill rewrites the same objects.
"""

from __future__ import annotations

import zlib
from datetime import UTC, datetime

from forewarn.config import Settings

#: The two state chains of the comparison: live runs (scheduled and manual), and backfills,
#: whose state never reaches a live run.
CHAINS = ("live", "backfill")
EVIDENCE_PREFIX = "compare/dt="
INCIDENTS_PREFIX = "incidents/"
OPEN_PREFIX = "incidents/open/"
#: One record per alert episode (its span and metrics), by the day it started: what training
#: keeps out of the history it fits.
EPISODES_PREFIX = "episodes/"
#: Operators' labels and maintenance windows, one JSON object each (any tool may write them).
LABELS_PREFIX = "labels/"
MAINTENANCE_PREFIX = "maintenance/"
ACKS_PREFIX = "acks/"
#: How an interval's end names the state and checkpoint objects written after it.
MOMENT_FORMAT = "%Y-%m-%dT%H%M"


def hour_key(moment: datetime) -> str:
    """``YYYY/MM/DD/HH``: Firehose's arrival-hour folders."""
    return moment.strftime("%Y/%m/%d/%H")


def raw_hour_prefix(settings: Settings, hour: datetime) -> str:
    return f"{settings.raw_prefix}{hour_key(hour)}/"


def aggregate_key(settings: Settings, hour: datetime) -> str:
    return f"{settings.aggregates_prefix}dt={hour:%Y-%m-%d}/hour={hour:%H}/part-0.parquet"


def rejects_key(settings: Settings, arrival_hour: datetime) -> str:
    return f"{rejects_prefix(settings)}{hour_key(arrival_hour)}/rejects.jsonl"


def rejects_prefix(settings: Settings) -> str:
    return f"{settings.errors_prefix}rejected/"


def aggregate_summary_prefix(settings: Settings) -> str:
    return f"{settings.state_prefix}aggregate/"


def aggregate_summary_key(settings: Settings, window_key: str) -> str:
    return f"{aggregate_summary_prefix(settings)}{window_key}.json"


def run_prefix(settings: Settings, trained_until: datetime) -> str:
    return f"{settings.forecasts_prefix}run={trained_until:%Y-%m-%dT%H}/"


def manifest_key(settings: Settings, trained_until: datetime) -> str:
    return run_prefix(settings, trained_until) + "_manifest.json"


def hourly_key(settings: Settings, trained_until: datetime, shard: int, hour: datetime) -> str:
    """One comparison shard's forecasts for one hour of a run (written by the publish step from
    the batches), so a 5-minute comparison reads one small object instead of every batch."""
    return f"{run_prefix(settings, trained_until)}hourly/shard={shard:03d}/hour={hour:%Y-%m-%dT%H}.parquet"


def masked_key(settings: Settings, trained_until: datetime) -> str:
    """The episode spans a run kept out of its training data (written by the gather step)."""
    return run_prefix(settings, trained_until) + "masked.json"


def episode_key(started: datetime, token: str) -> str:
    return f"{EPISODES_PREFIX}started={started:%Y-%m-%d}/{token}.json"


def training_key(settings: Settings, trained_until: datetime) -> str:
    return run_prefix(settings, trained_until) + "training.parquet"


def batch_keys(settings: Settings, trained_until: datetime, batch_no: int) -> dict[str, str]:
    """A training batch's forecasts, backtests and model metadata."""
    prefix = run_prefix(settings, trained_until)
    return {"forecasts": f"{prefix}batch={batch_no:05d}.parquet", "backtest": f"{prefix}backtest-{batch_no:05d}.parquet",
            "models": f"{prefix}models-{batch_no:05d}.json"}


def is_rollup(series: str) -> bool:
    """A roll-up series (``<series>/region=eu``): no event's own series has a ``=``."""
    return "=" in series


def shard_of(series: str, shards: int) -> int:
    """The comparison shard a series belongs to: CRC-32 of its name (stable across processes
    and Python versions, unlike ``hash``). A roll-up series (``<series>/region=eu``; no event's
    series has a ``=``) is in its series' shard, whose events make it."""
    if shards <= 1:
        return 0
    if is_rollup(series):
        series = series[: series.index("=")].rsplit("/", 1)[0]
    return zlib.crc32(series.encode()) % shards


def shard_suffix(settings: Settings, shard: int | None) -> str:
    """What names a shard's own objects (nothing with one shard: the layout is unchanged)."""
    return "" if shard is None or settings.compare_shards <= 1 else f"shard={shard:03d}"


def state_dir(settings: Settings, chain: str = "live", shard: int | None = None) -> str:
    if chain not in CHAINS:
        raise ValueError(f"unknown state chain {chain!r}: {', '.join(CHAINS)}")
    base = f"{settings.state_prefix}compare/" if chain == "live" else f"{settings.state_prefix}compare-backfill/"
    suffix = shard_suffix(settings, shard)
    return f"{base}{suffix}/" if suffix else base


def state_key(settings: Settings, moment: datetime, chain: str = "live", shard: int | None = None) -> str:
    return f"{state_dir(settings, chain, shard)}{moment.strftime(MOMENT_FORMAT)}.arrow"


def legacy_state_keys(settings: Settings, moment: datetime, chain: str = "live", shard: int | None = None) -> list[str]:
    """Where earlier versions wrote the state after ``moment``: gzipped JSON, then plain JSON."""
    stem = f"{state_dir(settings, chain, shard)}{moment.strftime(MOMENT_FORMAT)}"
    return [f"{stem}.json.gz", f"{stem}.json"]


def parsed_prefix(settings: Settings) -> str:
    """Where the DuckDB engine keeps each landing object's parsed lines (expire with the raw)."""
    return f"{settings.state_prefix}parsed/"


def checkpoint_key(state_prefix: str, moment: datetime) -> str:
    return f"{state_prefix}kinesis/{moment.strftime(MOMENT_FORMAT)}.json"


def evidence_key(settings: Settings, start: datetime, shard: int | None = None) -> str:
    suffix = shard_suffix(settings, shard)
    return f"{EVIDENCE_PREFIX}{start:%Y-%m-%d}/{start:%H%M}{'-' + suffix if suffix else ''}.parquet"


def evidence_time(key: str) -> datetime:
    """The interval start an evidence key names (whatever its shard)."""
    day = key.split("dt=")[1].split("/")[0]
    hhmm = key.rsplit("/", 1)[1].split(".")[0].split("-")[0]
    return datetime.strptime(f"{day} {hhmm}", "%Y-%m-%d %H%M").replace(tzinfo=UTC)


def dimension_catalog_key(settings: Settings) -> str:
    """The dimension catalog: per roll-up key, the values that make series of their own and the
    bucket from which each does (``forewarn.dimensions.Catalog``)."""
    return f"{settings.state_prefix}dimensions/catalog.json"


def incident_key(token: str) -> str:
    return f"{INCIDENTS_PREFIX}{token}.json"


def open_marker_key(token: str) -> str:
    return f"{OPEN_PREFIX}{token}"
