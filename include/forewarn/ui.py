"""The forewarn page in the Airflow UI: each series' recent actuals against the forecast band,
the open and resolved incidents, and links to their evidence; per series, its forecast's quality
over the last day and the week's labelled precision.

A small FastAPI app, mounted by ``plugins/forewarn_plugin.py`` under ``/forewarn`` in Airflow's
API server and shown in the UI's navigation as an external view. It reads only what the DAGs
wrote to S3 — the comparison's evidence Parquet (``compare/dt=…/HHMM.parquet``) and the incident
registry (``incidents/<token>.json``) — so it never disagrees with them, and it draws the charts
as inline SVG (no JavaScript, nothing fetched from outside). Every route requires a user the
Airflow auth manager lets read DAGs.

Routes (under ``/forewarn``):

- ``/``: the series ranked by urgency, 24 charts a page (``?q=`` a part of the name, ``?dim=``
  a roll-up's ``key=value``, ``?page=``, ``?hours=``), and the incidents.
- ``/series?name=…&metric=…&days=N``: one series' days of history (1–14): actual against the
  forecast band, anomalous buckets, its incidents and labels; for a series with roll-up
  children, each child's actual against expected and share of the deviation, by dimension; for
  a child, a link to its parent.
- ``/incident?token=…``: one incident's facts, where it happened (the contributors), the series
  that joined it and the chart around it.
- ``/evidence?key=…``: one interval's evidence rows; ``/api/summary``: the page as JSON.

The evidence is read through ``forewarn.evidence``: each object parsed once and kept by key and
ETag, the ranking computed on compact columns, rows built only for the charts drawn.

Each open incident has the operators' actions as plain HTML forms: **acknowledge** (``acks/``),
**label** it (``labels/``; a label on an open incident resolves it at the next comparison) and
**snooze** its series (a window under ``maintenance/``) — the same objects ``forewarn ack``,
``forewarn label`` and ``forewarn snooze`` write, recorded with the Airflow user's name. Posting
them needs the auth manager's permission to edit DAGs (``PUT`` on forewarn_compare), and a
request from another origin is refused.
"""

from __future__ import annotations

import html
import logging
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from forewarn.config import Settings
from forewarn.layout import INCIDENTS_PREFIX

if TYPE_CHECKING:
    import pandas as pd

    from forewarn.evidence import Window

log = logging.getLogger(__name__)

#: Evidence objects read per page (one per compared interval).
MAX_INTERVALS = 288
#: Incident records listed (the most recently written first).
MAX_INCIDENTS = 100
#: Days of history a series' view may show.
MAX_DAYS = 14


@dataclass
class PageData:
    bucket: str
    evidence: pd.DataFrame | None  # the window's rows, when not read through ``window``
    incidents: list[dict[str, Any]]
    intervals: list[str]  # evidence keys read, oldest first
    dashboard_url: str | None = None
    settings_of: dict[str, str] | None = None  # per series, the per-series settings that apply, in words
    settings_problem: str | None = None  # the settings file's error, if it has one
    #: per ``series|metric``: the forecast's quality over the last day (``forewarn.quality``)
    quality: dict[str, dict[str, Any]] | None = None
    #: per series: the episodes labelled in the past week, real ones and all (``LabelPrecision``)
    precision: dict[str, tuple[int, int]] | None = None
    window: Window | None = None  # the evidence as read (``forewarn.evidence``), instead of ``evidence``
    series_rules: list[Any] | None = None  # the per-series settings' rules, put in words for the series drawn

    def evidence_window(self) -> Window:
        from forewarn.evidence import Window

        return self.window if self.window is not None else Window.of_frame(self.evidence)


def evidence_keys(s3: Any, bucket: str, hours: int) -> list[str]:
    """The evidence objects of the compared intervals in the ``hours`` up to the newest one,
    oldest first (the newest days' partitions only are listed)."""
    from forewarn.evidence import list_evidence

    return [key for key, _ in list_evidence(s3, bucket, hours, limit=MAX_INTERVALS)]


def _key_time(key: str) -> datetime:
    from forewarn.layout import evidence_time

    return evidence_time(key)


#: Incident records read lately, by (bucket, key, ETag): a record is rewritten with each change.
_RECORDS: dict[tuple[str, str, str], dict[str, Any]] = {}
_RECORDS_LOCK = threading.Lock()


def read_incidents(s3: Any, bucket: str) -> list[dict[str, Any]]:
    """The incident registry, newest first: what was opened, where, and whether it has ended.
    Only the ``MAX_INCIDENTS`` records written last are read (eight at a time; a record read
    before and not rewritten since is not read again)."""
    import json

    objects = [o for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=INCIDENTS_PREFIX, Delimiter="/")
               for o in page.get("Contents", []) if o["Key"].endswith(".json")]
    newest = sorted(objects, key=lambda o: o["LastModified"], reverse=True)[:MAX_INCIDENTS]

    def one(obj: dict[str, Any]) -> dict[str, Any]:
        with _RECORDS_LOCK:
            record = _RECORDS.get((bucket, obj["Key"], obj.get("ETag", "")))
        if record is None:
            resp = s3.get_object(Bucket=bucket, Key=obj["Key"])
            record = json.loads(resp["Body"].read())
            with _RECORDS_LOCK:
                _RECORDS[(bucket, obj["Key"], resp["ETag"])] = record
        return record

    with ThreadPoolExecutor(max(1, min(8, len(newest)))) as pool:
        records = list(pool.map(one, newest))
    with _RECORDS_LOCK:  # keep what this listing names, and other buckets' records
        listed = {(bucket, o["Key"], o.get("ETag", "")) for o in newest}
        for cached in [k for k in _RECORDS if k[0] == bucket and k not in listed]:
            _RECORDS.pop(cached, None)
    out = []
    for obj, record in zip(newest, records, strict=True):
        facts = record.get("facts", {})
        out.append({
            "token": obj["Key"].removeprefix(INCIDENTS_PREFIX).removesuffix(".json"),
            "status": record.get("status", "open"),
            "ended": record.get("ended") or facts.get("ended"),
            "refs": record.get("refs", {}),
            "acknowledged": record.get("acknowledged"),
            **{k: v for k, v in facts.items() if k != "ended"},
        })
    opened = [r for r in out if r["status"] == "open"]
    closed = sorted((r for r in out if r["status"] != "open"), key=lambda r: r.get("started") or "", reverse=True)
    return sorted(opened, key=lambda r: r.get("started") or "", reverse=True) + closed


def collect(settings: Settings, s3: Any, hours: int = 6, dashboard_url: str | None = None) -> PageData:
    """What the main page shows: the evidence of the ``hours`` up to the newest interval (kept
    parsed between requests), the incidents, the per-series settings, the forecasts' quality
    and the week's labelled precision (read at the same time)."""
    from forewarn.evidence import CACHE, list_evidence

    now = datetime.now(UTC)
    with ThreadPoolExecutor(4) as pool:
        incidents = pool.submit(read_incidents, s3, settings.bucket)
        rules = pool.submit(read_series_rules, settings, s3)
        quality = pool.submit(model_quality, settings, s3, now, hours)
        precision = pool.submit(label_precision, settings, s3, now)
        objects = list_evidence(s3, settings.bucket, hours, limit=MAX_INTERVALS)
        window = CACHE.window(s3, settings.bucket, objects)
        series_rules, problem = rules.result()
        return PageData(bucket=settings.bucket, evidence=None, window=window, incidents=incidents.result(),
                        intervals=[key for key, _ in objects], dashboard_url=dashboard_url, series_rules=series_rules,
                        settings_problem=problem, quality=quality.result(), precision=precision.result())


def model_quality(settings: Settings, s3: Any, now: datetime, hours: int) -> dict[str, dict[str, Any]]:
    """Per ``series|metric``, from the newest detector state of each shard (no older than
    ``hours``): whether a whole day has been counted, the day's 95%-band coverage and error
    ratio, and whether a model-quality alert is open. Empty when there is no state (logged)."""
    from forewarn.state import latest_moment, read_state

    out: dict[str, dict[str, Any]] = {}
    shards = [None] if settings.compare_shards <= 1 else list(range(settings.compare_shards))
    for shard in shards:
        try:
            moment = latest_moment(settings, s3, now, "live", timedelta(hours=hours), shard)
            if moment is None:
                continue
            cached = (settings.bucket, settings.state_prefix, shard, moment)
            if cached not in _QUALITY_SEEN:  # a state is written once per interval: read each once
                state = read_state(settings, s3, moment, "live", shard=shard)
                _QUALITY_SEEN[cached] = {} if state is None else _quality_of(state)
                while len(_QUALITY_SEEN) > 4 * max(len(shards), 1):
                    _QUALITY_SEEN.pop(next(iter(_QUALITY_SEEN)))
        except Exception as err:  # the page shows what it can
            log.warning("could not read the detector state for the forecast's quality: %s", err)
            continue
        out.update(_QUALITY_SEEN[cached])
    return out


#: The figures of the states read lately, by (bucket, prefix, shard, moment), oldest first.
_QUALITY_SEEN: dict[tuple, dict[str, dict[str, Any]]] = {}


def _quality_of(state: Any) -> dict[str, dict[str, Any]]:
    from forewarn import quality

    full, coverage, error = quality.rolling(state.memory)
    out = {}
    for i, name in enumerate(state.keys):
        cov, err = float(coverage[i]), float(error[i])
        out[name] = {"full": bool(full[i]), "coverage": cov if math.isfinite(cov) else None,  # nothing counted yet: None
                     "error": err if math.isfinite(err) else None, "degraded": bool(state.memory.q_since[i] > 0)}
    return out


def label_precision(settings: Settings, s3: Any, now: datetime) -> dict[str, tuple[int, int]]:
    """Per series, of its episodes labelled in the past week: how many were real, of how many."""
    from forewarn.labels import read_labels, weekly_precision

    try:
        labels, _ = read_labels(settings, s3)
    except Exception as err:
        log.warning("could not read the labels: %s", err)
        return {}
    return weekly_precision(labels, now)


def quality_words(q: dict[str, Any] | None) -> tuple[str, bool]:
    """The forecast's quality in words, and whether it is degraded."""
    from forewarn import quality

    if not q or q["coverage"] is None or q["error"] is None:
        return "", False
    counted = "the last day" if q["full"] else "the day so far"
    bad = q["degraded"] or (q["full"] and (q["coverage"] < quality.COVERAGE_ALERT or q["error"] > quality.ERROR_ALERT))
    return (f"forecast over {counted}: {q['coverage']:.0%} inside its 95% band, error {q['error']:.1f}× validation"
            + (" — degraded" if bad else "")), bad


def read_series_rules(settings: Settings, s3: Any) -> tuple[list[Any], str | None]:
    """The per-series settings' rules, and the file's error if it cannot be used (no rules then)."""
    from forewarn.series_settings import SeriesSettingsError, read_series_settings

    try:
        return read_series_settings(settings, s3), None
    except SeriesSettingsError as err:
        return [], str(err)


def settings_words(rules: list[Any], series: list[str]) -> dict[str, str]:
    """Per series, the per-series settings that apply to it, in words (the file's lines that
    match and what they set); series no line matches are left out."""
    from forewarn.series_settings import applied

    out = {}
    for name in series:
        a = applied(rules, name)
        if not a.rules:
            continue
        said = []
        for field in ("threshold", "direction", "min_abs_deviation", "min_rel_deviation", "metrics", "sinks", "model",
                      "holidays", "events", "tz", "source"):
            value = getattr(a, field)
            if value is None or (field == "direction" and value == "both") or (field.startswith("min_") and value == 0.0):
                continue
            text = ", ".join(str(v) for v in value) if isinstance(value, tuple) else str(value)
            said.append(f"{field} {text}")
        out[name] = f"settings (line{'s' if len(a.rules) > 1 else ''} {', '.join(map(str, a.rules))}): " + ("; ".join(said) or "defaults")
    return out


def series_settings_words(settings: Settings, s3: Any, series: list[str]) -> tuple[dict[str, str], str | None]:
    """Per series, the per-series settings that apply to it, in words; and the file's error, if
    it cannot be used."""
    rules, problem = read_series_rules(settings, s3)
    return ({}, problem) if problem else (settings_words(rules, series), None)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:16px;color:#1f2933;background:#fff}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:24px 0 8px}
.muted{color:#616e7c;font-size:13px}
.cards{display:flex;gap:12px;margin:12px 0}
.card{border:1px solid #d9e2ec;border-radius:6px;padding:8px 14px;min-width:120px}
.card b{display:block;font-size:22px}
table{border-collapse:collapse;font-size:13px;width:100%}
th,td{border-bottom:1px solid #e4e7eb;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f5f7fa}
.open{color:#b91c1c;font-weight:600} .resolved{color:#15803d}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:14px}
figure{margin:0;border:1px solid #e4e7eb;border-radius:6px;padding:8px}
figcaption{font-size:13px;font-weight:600;margin-bottom:4px}
.legend{font-size:12px;color:#616e7c}
.legend span{margin-right:12px}
.swatch{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:middle}
.crumbs{font-size:13px;margin-bottom:6px} .facts th{width:180px}
.bar{display:inline-block;height:9px;background:#dc2626;vertical-align:middle;margin-right:6px}
td.num{text-align:right;font-variant-numeric:tabular-nums} .named{font-weight:600}
"""


def _fmt(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return html.escape(str(value))
    if not math.isfinite(v):
        return "–"
    return f"{v:,.4g}"


def _when(stamp: str | None) -> str:
    return html.escape(str(stamp or "")[:16].replace("T", " "))


def chart_svg(frame: pd.DataFrame, incidents: list[dict[str, Any]], width: int = 560, height: int = 170,
              spans: list[dict[str, Any]] | None = None) -> str:
    """Actual (line), forecast (dashed) and 95% band (shaded) of one series' metric, anomalous
    buckets as red dots and incident starts as red vertical lines. ``spans``: stretches shaded
    behind the lines, each ``{"start", "end" (None: to the chart's end), "class", "color",
    "title"}`` (an incident from start to end, a label)."""
    import pandas as pd

    f = frame.sort_values("bucket_start")
    t = pd.to_datetime(f["bucket_start"], utc=True)
    cols = {c: pd.to_numeric(f[c], errors="coerce").to_numpy(dtype=float) for c in ("actual", "mean", "lower_95", "upper_95")}
    finite = [v for arr in cols.values() for v in arr if math.isfinite(v)]
    if len(t) < 2 or not finite:
        return f'<svg width="{width}" height="{height}" role="img"><text x="10" y="20" font-size="12">no compared buckets yet</text></svg>'
    lo, hi = min(finite), max(finite)
    if hi == lo:
        lo, hi = lo - 1, hi + 1
    pad_l, pad_r, pad_t, pad_b = 52, 28, 8, 20
    t0, t1 = t.iloc[0].timestamp(), t.iloc[-1].timestamp()
    span = max(t1 - t0, 1.0)

    def x(ts: float) -> float:
        return pad_l + (ts - t0) / span * (width - pad_l - pad_r)

    def y(v: float) -> float:
        return pad_t + (hi - v) / (hi - lo) * (height - pad_t - pad_b)

    secs = [ts.timestamp() for ts in t]
    band_ok = [i for i in range(len(secs)) if math.isfinite(cols["lower_95"][i]) and math.isfinite(cols["upper_95"][i])]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" role="img" class="chart">']
    for frac in (0.0, 0.5, 1.0):
        v = lo + frac * (hi - lo)
        parts.append(f'<line x1="{pad_l}" x2="{width - pad_r}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eef2f7"/>')
        parts.append(f'<text x="{pad_l - 4}" y="{y(v) + 4:.1f}" font-size="10" text-anchor="end" fill="#616e7c">{_fmt(v)}</text>')
    stamp = "%m-%d %H:%M" if span > 20 * 3600 else "%H:%M"
    for ts in (t.iloc[0], t.iloc[len(t) // 2], t.iloc[-1]):
        anchor = "start" if ts is t.iloc[0] else ("end" if ts is t.iloc[-1] else "middle")
        parts.append(f'<text x="{x(ts.timestamp()):.1f}" y="{height - 5}" font-size="10" text-anchor="{anchor}" fill="#616e7c">{ts.strftime(stamp)}</text>')
    for shade in spans or []:
        try:
            a = max(pd.Timestamp(shade["start"]).tz_convert("UTC").timestamp(), t0)
            b = min(pd.Timestamp(shade["end"]).tz_convert("UTC").timestamp(), t1) if shade.get("end") is not None else t1
        except (ValueError, TypeError):
            continue
        if b < a:
            continue
        parts.append(f'<rect class="{html.escape(shade["class"])}" x="{x(a):.1f}" y="{pad_t}" width="{max(x(b) - x(a), 2.0):.1f}" '
                     f'height="{height - pad_t - pad_b}" fill="{html.escape(shade["color"])}" fill-opacity="0.18">'
                     f'<title>{html.escape(shade["title"])}</title></rect>')
    if band_ok:
        upper = " ".join(f"{x(secs[i]):.1f},{y(cols['upper_95'][i]):.1f}" for i in band_ok)
        lower = " ".join(f"{x(secs[i]):.1f},{y(cols['lower_95'][i]):.1f}" for i in reversed(band_ok))
        parts.append(f'<polygon class="band" points="{upper} {lower}" fill="#bfdbfe" fill-opacity="0.6" stroke="none"/>')
    for name, style in (("mean", 'stroke="#1d4ed8" stroke-dasharray="4 3"'), ("actual", 'stroke="#111827" stroke-width="1.4"')):
        pts = " ".join(f"{x(secs[i]):.1f},{y(v):.1f}" for i, v in enumerate(cols[name]) if math.isfinite(v))
        if pts:
            parts.append(f'<polyline class="{name}" points="{pts}" fill="none" {style}/>')
    flagged = f["anomalous"].to_numpy() != 0 if "anomalous" in f else []
    for i, bad in enumerate(flagged):
        if bad and math.isfinite(cols["actual"][i]):
            parts.append(f'<circle class="anomaly" cx="{x(secs[i]):.1f}" cy="{y(cols["actual"][i]):.1f}" r="3" fill="#dc2626"/>')
    for inc in incidents:
        try:
            started = pd.Timestamp(inc["started"]).tz_convert("UTC").timestamp()
        except (KeyError, ValueError, TypeError):
            continue
        if t0 <= started <= t1:
            parts.append(f'<line class="incident" x1="{x(started):.1f}" x2="{x(started):.1f}" y1="{pad_t}" y2="{height - pad_b}" '
                         f'stroke="#dc2626" stroke-width="1.5"><title>incident opened {html.escape(inc["started"])}</title></line>')
    parts.append("</svg>")
    return "".join(parts)


def evidence_link(uri: str | None, prefix: str, series: str | None = None) -> str:
    if not uri or "/compare/" not in uri:
        return ""
    key = "compare/" + uri.split("/compare/", 1)[1]
    query = f"key={quote(key)}" + (f"&series={quote(series)}" if series else "")
    return f'<a href="{prefix}/evidence?{query}">evidence</a>'


#: Charts drawn per page of the series list.
PER_PAGE = 24


def ranked_series(stats: pd.DataFrame, incidents: list[dict[str, Any]], query: str = "", dims: list[str] | None = None
                  ) -> list[tuple[str, str]]:
    """Every (series, metric) of ``stats`` (``Window.stats``: per series and metric, the peak
    likelihood and latest anomalous bucket of the window), most urgent first: those with an open
    incident, then by the highest anomaly likelihood of the window, then by the latest anomalous
    bucket, then by name. ``query``: a case-insensitive part of the series name; ``dims``:
    ``key=value`` each a roll-up series must carry (``<series>/region=eu``)."""
    if not len(stats):
        return []
    names = stats["series"]
    keep = names.str.lower().str.contains(query.lower(), regex=False) if query else names.notna()
    for d in dims or []:
        keep &= (names + "/").str.contains(f"/{d}/", regex=False)
    open_series = {i.get("series") for i in incidents if i.get("status") == "open"}
    chosen = stats[keep].assign(calm=~names[keep].isin(open_series))
    chosen = chosen.sort_values(["calm", "peak", "latest", "series", "metric"], ascending=[True, False, False, True, True],
                                kind="stable")
    return list(zip(chosen["series"].tolist(), chosen["metric"].tolist(), strict=True))


def series_href(prefix: str, series: str, metric: str | None = None, days: int | None = None) -> str:
    """The series view of ``series`` (an attribute value: escaped)."""
    params = [("name", series)] + ([("metric", metric)] if metric else []) + ([("days", str(days))] if days else [])
    return html.escape(f"{prefix}/series?{urlencode(params)}")


def incident_href(prefix: str, token: str) -> str:
    return html.escape(f"{prefix}/incident?{urlencode([('token', token)])}")


def render_page(data: PageData, prefix: str = "/forewarn", query: str = "", dims: list[str] | None = None, page: int = 1,
                hours: int = 6) -> str:
    window = data.evidence_window()
    stats = window.stats()
    ranked = ranked_series(stats, data.incidents, query, dims)
    pages = max(1, math.ceil(len(ranked) / PER_PAGE))
    page = min(max(page, 1), pages)
    series_metrics = ranked[(page - 1) * PER_PAGE : page * PER_PAGE]
    all_series = int(stats["series"].nunique())
    drawn = window.rows(window.keys.known(series_metrics))
    frames = dict(iter(drawn.groupby(["series", "metric"], sort=False))) if len(drawn) else {}
    settings_of = data.settings_of if data.settings_of is not None else settings_words(
        data.series_rules or [], sorted({s for s, _ in series_metrics}))
    opened = [i for i in data.incidents if i["status"] == "open"]
    last = _key_time(data.intervals[-1]).strftime("%Y-%m-%d %H:%M UTC") if data.intervals else "never"
    out = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>forewarn</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>forewarn</h1>",
        f"<div class='muted'>Actuals against the forecast band and the incidents they opened, from s3://{html.escape(data.bucket)}/ "
        f"(the comparison's evidence and incident registry). Last compared interval: <b id='last-interval'>{last}</b>.</div>",
        "<div class='cards'>",
        f"<div class='card'><b id='series-count'>{all_series}</b>series</div>",
        f"<div class='card'><b id='open-count'>{len(opened)}</b>open incidents</div>",
        f"<div class='card'><b id='resolved-count'>{len(data.incidents) - len(opened)}</b>resolved</div>",
        f"<div class='card'><b>{len(data.intervals)}</b>intervals shown</div>",
        "</div>",
    ]
    if data.dashboard_url:
        out.append(f"<div class='muted'><a href='{html.escape(data.dashboard_url)}' target='_blank' rel='noopener'>CloudWatch dashboard</a></div>")
    out.append("<h2>Incidents</h2>")
    if data.incidents:
        out.append("<table id='incidents'><tr><th>status</th><th>series</th><th>metric</th><th>what happened</th><th>started</th>"
                   "<th>ended</th><th>impact</th><th>likelihood</th><th>opened in</th><th></th></tr>")
        for inc in data.incidents:
            word = "dropped below" if inc.get("direction") == "below" else "rose above"
            what = (f"{_fmt(inc.get('actual'))} vs expected {_fmt(inc.get('expected'))} "
                    f"(95% band {_fmt(inc.get('lower_95'))}–{_fmt(inc.get('upper_95'))}): {word} its forecast")
            others = [d for d in inc.get("deviations", []) if (d["metric"], d["direction"]) != (inc.get("metric"), inc.get("direction"))]
            if others:  # deviations of other metrics that joined the episode
                what += "; also " + ", ".join(f"{d['metric']} {d['direction']} from {d['since'][11:16]}" for d in others)
            if inc.get("contributors"):  # which dimension moved
                from forewarn.dimensions import words

                what += f"; where: {words(inc['contributors'])}"
            if inc.get("related"):  # one incident per cause: the roll-up children that joined it
                what += f"; related: {', '.join(inc['related'][:10])}" + (" …" if len(inc["related"]) > 10 else "")
            sinks = ", ".join(html.escape(name) for name in sorted(inc.get("refs", {})))
            episode_like = inc.get("episode") and "|model-quality:" not in str(inc["episode"]) and inc.get("series") != "forewarn"
            actions = _actions(inc, prefix) if inc["status"] == "open" and episode_like else ""
            out.append(
                f"<tr class='incident-row'><td class='{html.escape(inc['status'])}'>{html.escape(inc['status'])}</td>"
                f"<td>{html.escape(str(inc.get('series', '')))}</td><td>{html.escape(str(inc.get('metric', '')))}</td>"
                f"<td>{_incident_link(inc, prefix, html.escape(what))}</td><td>{_when(inc.get('started'))}</td><td>{_when(inc.get('ended'))}</td>"
                f"<td>{_fmt(inc.get('impact'))}</td>"
                f"<td>{_fmt(inc.get('anomaly_likelihood'))}</td><td>{sinks}</td>"
                f"<td>{evidence_link(inc.get('evidence'), prefix, inc.get('series'))}{actions}</td></tr>"
            )
        out.append("</table>")
    else:
        out.append("<p class='muted' id='no-incidents'>No incidents opened.</p>")
    out.append("<h2>Series</h2>")
    shown_from = (page - 1) * PER_PAGE + 1 if ranked else 0
    out.append(f"<form method='get' action='{html.escape(prefix)}/' class='search'>"
               f"<input type='search' name='q' value='{html.escape(query)}' placeholder='series name contains' aria-label='search series'> "
               + "".join(f"<input type='hidden' name='dim' value='{html.escape(d)}'>" for d in dims or [])
               + "<input name='dim' placeholder='roll-up key=value' aria-label='roll-up filter' size='18'> "
               + f"<input type='hidden' name='hours' value='{hours}'><button>search</button></form>")
    if dims:
        out.append(f"<div class='muted' id='dim-filter'>roll-ups with {html.escape(', '.join(dims))}</div>")

    def link(p: int, text: str) -> str:
        params = [("hours", str(hours)), ("page", str(p))] + ([("q", query)] if query else []) + [("dim", d) for d in dims or []]
        href = f"{prefix}/?" + "&".join(f"{k}={quote(v)}" for k, v in params)
        return f"<a href='{html.escape(href)}' rel='{'prev' if p < page else 'next'}'>{text}</a>"

    nav = [f"<span id='paging'>series-metrics {shown_from}–{shown_from + len(series_metrics) - 1 if ranked else 0} of {len(ranked)}, "
           f"most urgent first (open incident, then likelihood, then the latest anomaly)</span>"]
    if page > 1:
        nav.append(link(page - 1, "« previous"))
    if page < pages:
        nav.append(link(page + 1, "next »"))
    out.append(f"<div class='muted nav'>{' · '.join(nav)}</div>")
    if data.settings_problem:
        out.append(f"<p class='open' id='settings-problem'>The per-series settings cannot be used: {html.escape(data.settings_problem)}</p>")
    out.append("<div class='legend'><span><i class='swatch' style='background:#111827'></i>actual</span>"
               "<span><i class='swatch' style='background:#1d4ed8'></i>forecast</span>"
               "<span><i class='swatch' style='background:#bfdbfe'></i>95% band</span>"
               "<span><i class='swatch' style='background:#dc2626'></i>anomalous bucket / incident opened</span></div>")
    if not series_metrics:
        out.append("<p class='muted' id='no-series'>Nothing compared yet: forewarn_compare writes evidence every interval once a forecast exists.</p>")
    out.append("<div class='grid'>")
    told: set[str] = set()
    for series, metric in series_metrics:
        frame = frames.get((series, metric), drawn.iloc[0:0])
        incs = [i for i in data.incidents if i.get("series") == series and i.get("metric") == metric]
        applies = settings_of.get(series)
        note = f"<div class='muted settings'>{html.escape(applies)}</div>" if applies else ""
        words, bad = quality_words((data.quality or {}).get(f"{series}|{metric}"))
        if words:
            note += f"<div class='quality {'open' if bad else 'muted'}'>{html.escape(words)}</div>"
        real_total = (data.precision or {}).get(series)
        if real_total and real_total[1] and series not in told:  # once a series, on its first chart
            told.add(series)
            real, total = real_total
            note += (f"<div class='muted precision'>labelled this week: {real} real of {total} "
                     f"(precision {real / total:.0%})</div>")
        out.append(f"<figure data-series='{html.escape(series)}' data-metric='{html.escape(metric)}'>"
                   f"<figcaption><a href='{series_href(prefix, series, metric)}'>{html.escape(series)} · {html.escape(metric)}</a>"
                   f"</figcaption>{note}{chart_svg(frame, incs)}</figure>")
    out.append("</div></body></html>")
    return "".join(out)


def _incident_link(inc: dict[str, Any], prefix: str, text: str) -> str:
    """``text`` (HTML) as a link to the incident's view, when its record is known."""
    token = inc.get("token")
    return f"<a class='incident-link' href='{incident_href(prefix, token)}'>{text}</a>" if token else text


def _actions(inc: dict[str, Any], prefix: str) -> str:
    """The forms of an open incident: acknowledge, label, snooze its series."""
    episode = html.escape(str(inc["episode"]), quote=True)
    acked = inc.get("acknowledged")
    ack = (f"<span class='muted'>{html.escape(str(acked))}</span>" if acked else
           f"<form method='post' action='{prefix}/actions/ack' class='ack'><input type='hidden' name='episode' value='{episode}'>"
           "<input name='note' placeholder='note' maxlength='200'><button>acknowledge</button></form>")
    kinds = "".join(f"<option value='{k}'>{k}</option>" for k in ("not_anomaly", "expected", "real", "new_normal"))
    label = (f"<form method='post' action='{prefix}/actions/label' class='label'><input type='hidden' name='episode' value='{episode}'>"
             f"<select name='kind'>{kinds}</select><input name='note' placeholder='note' maxlength='200'><button>label</button></form>")
    snooze = (f"<form method='post' action='{prefix}/actions/snooze' class='snooze'><input type='hidden' name='episode' value='{episode}'>"
              "<input name='minutes' type='number' min='1' max='10080' value='60'><button>snooze (min)</button></form>")
    return f"<div class='actions'>{ack}{label}{snooze}</div>"



def render_done(what: str, key: str, prefix: str) -> str:
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>forewarn</title>"
            f"<style>{CSS}</style></head><body><h1>Done</h1><p id='done'>{html.escape(what)}</p>"
            f"<p class='muted'>written to {html.escape(key)}; the next comparison acts on it. <a href='{prefix}/'>back</a></p></body></html>")


def render_evidence(frame: pd.DataFrame, key: str, series: str | None, prefix: str = "/forewarn") -> str:
    rows = frame if not series else frame[frame["series"] == series]
    cols = [c for c in ("series", "metric", "bucket_start", "actual", "mean", "lower_95", "upper_95", "deviation", "likelihood", "anomalous") if c in rows]
    out = ["<!doctype html><html lang='en'><head><meta charset='utf-8'><title>forewarn evidence</title>",
           f"<style>{CSS}</style></head><body><h1>Evidence</h1>",
           f"<div class='muted'>{html.escape(key)}{' · series ' + html.escape(series) if series else ''} · "
           f"<a href='{prefix}/'>back</a></div><table id='evidence'><tr>",
           "".join(f"<th>{c}</th>" for c in cols), "</tr>"]
    for row in rows[cols].itertuples(index=False):
        flag = " class='open'" if "anomalous" in cols and row[cols.index("anomalous")] else ""
        out.append(f"<tr{flag}>" + "".join(f"<td>{_fmt(v) if isinstance(v, float) else html.escape(str(v))}</td>" for v in row) + "</tr>")
    out.append("</table></body></html>")
    return "".join(out)


# --------------------------------------------------------------------------------------------
# One series, one incident
# --------------------------------------------------------------------------------------------

#: Shading of an incident's stretch and of a label's on a chart.
INCIDENT_COLOR, LABEL_COLOR = "#dc2626", "#7c3aed"
#: Evidence kept parsed for the main page: the series view keeps what it reads of these hours.
KEPT_HOURS = 6


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{body}</body></html>")


def rollup_children(series: str, names: Any) -> dict[tuple[str, ...], list[tuple[str, dict[str, str]]]]:
    """The roll-up children of ``series`` among ``names``, by their dimension keys (each child's
    name says them: ``<series>/region=eu/channel=app``), each with its values."""
    from forewarn.dimensions import split_rollup

    out: dict[tuple[str, ...], list[tuple[str, dict[str, str]]]] = {}
    for name in sorted(n for n in names if n.startswith(series + "/")):
        base, values = split_rollup(name)
        if values and base == series:
            out.setdefault(tuple(values), []).append((name, values))
    return out


def rollup_parent(name: str) -> tuple[str, dict[str, str]] | None:
    """The series ``name`` rolls up (``sales.count`` for ``sales.count/region=eu``) and its
    dimension values; None when it is not a roll-up."""
    from forewarn.dimensions import split_rollup

    base, values = split_rollup(name)
    return (base, values) if values else None


def _dims(values: dict[str, str]) -> str:
    return "/".join(f"{k}={v}" for k, v in values.items())


@dataclass
class SeriesData:
    series: str
    metric: str
    metrics: list[str]  # every metric of the series in the window
    days: int
    rows: pd.DataFrame  # the evidence of the series and of its roll-ups over the window
    incidents: list[dict[str, Any]]  # of the series, or that it joined
    labels: list[Any]  # the labels on the series or its episodes
    intervals: int


def series_data(settings: Settings, s3: Any, series: str, metric: str, days: int) -> SeriesData | None:
    """What the series view shows; None when the evidence of its ``days`` holds no row of it."""
    from forewarn.evidence import CACHE, list_evidence
    from forewarn.labels import read_labels

    objects = list_evidence(s3, settings.bucket, hours=24 * days)
    if not objects:
        return None
    kept = _key_time(objects[-1][0]) - timedelta(hours=KEPT_HOURS)
    with ThreadPoolExecutor(2) as pool:
        incidents = pool.submit(read_incidents, s3, settings.bucket)
        labels = pool.submit(read_labels, settings, s3)
        rows = CACHE.series_rows(s3, settings.bucket, objects, series, keep_after=kept)
        mine = rows[rows["series"] == series]
        if not len(mine):
            return None
        metrics = sorted(set(mine["metric"]))
        return SeriesData(series=series, metric=metric or metrics[0], metrics=metrics, days=days, rows=rows,
                          incidents=[i for i in incidents.result() if i.get("series") == series or series in (i.get("related") or [])],
                          labels=[lb for lb in labels.result()[0] if lb.series == series], intervals=len(objects))


def _spans(incidents: list[dict[str, Any]], labels: list[Any]) -> list[dict[str, Any]]:
    """The incidents' stretches (start to end, or on) and the labels' (an episode's label from
    its start) shaded on a chart."""
    out = [{"start": i.get("started"), "end": i.get("ended"), "class": "episode", "color": INCIDENT_COLOR,
            "title": f"incident {i.get('status', '')} {str(i.get('started', ''))[:16]}–{str(i.get('ended') or '')[:16]}"}
           for i in incidents if i.get("started")]
    for label in labels:
        start = label.start or (label.episode.split("|", 1)[1] + "+00:00" if label.episode else None)
        if start is None:
            continue
        end = label.end or (None if label.start is None and not label.episode else (pd_timestamp(start) + timedelta(minutes=5)))
        out.append({"start": start, "end": end, "class": "label", "color": LABEL_COLOR,
                    "title": f"labelled {label.kind}" + (f" by {label.by}" if label.by else "") + (f": {label.note}" if label.note else "")})
    return out


def pd_timestamp(value: Any) -> Any:
    import pandas as pd

    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp


def drilldown(rows: pd.DataFrame, series: str, metric: str, since: Any, prefix: str, days: int) -> str:
    """Per dimension, each roll-up child's actual against expected and its share of ``series``'
    deviation (buckets from ``since`` on), each linking to its view; empty when it has none."""
    from forewarn.dimensions import adds_up, contributors, deviations, words

    groups = rollup_children(series, set(rows["series"]))
    if not groups:
        return ""
    table = deviations(rows, series, metric, since)
    adds = adds_up(metric)
    total = float(table["deviation"].get(series, math.nan)) if adds else math.nan
    found = contributors(rows, series, metric, tuple(groups), since)
    named = {c["series"] for c in found}
    out = ["<h2 id='drilldown'>Where: its roll-ups</h2><div class='muted'>"
           + (f"each child's actual and expected summed over the buckets {'since ' + _when(str(since)) if since is not None else 'shown'}, "
              "and its share of the parent's deviation (actual less forecast)" if adds else
              f"{html.escape(metric)} does not add up over children (only counts and sums do): each child's mean per bucket, no shares")
           + (f"; <b>{html.escape(words(found))}</b> of it explained (in bold)" if found else "") + ".</div>"]
    if adds:
        out.append(f"<div class='muted'>{html.escape(series)}: actual {_fmt(table['actual'].get(series))} vs expected "
                   f"{_fmt(table['expected'].get(series))}, deviation {_fmt(total)}</div>")
    for keys in sorted(groups, key=lambda ks: (not any(name in named for name, _ in groups[ks]), ks)):  # the explanation first
        kids = groups[keys]
        out.append(f"<h3 class='dimension'>by {html.escape(', '.join(keys))}</h3><table class='children' data-keys='{html.escape(','.join(keys))}'>"
                   "<tr><th>child</th><th>actual</th><th>expected</th><th>deviation</th><th>share of the deviation</th></tr>")
        listed = []
        for name, values in kids:
            if name not in table.index:
                continue
            row = table.loc[name]
            n = max(int(row["buckets"]), 1)
            share = float(row["deviation"]) / total if adds and math.isfinite(total) and total != 0 else math.nan
            share = 0.0 if share == 0 else share  # not "-0%"
            listed.append((-share if math.isfinite(share) else 0.0, name, values, row, n, share))
        for _, name, values, row, n, share in sorted(listed, key=lambda t: (t[0], t[1])):
            scale = 1 if adds else n
            bar = f"<i class='bar' style='width:{min(max(share, 0.0), 1.0) * 120:.0f}px'></i>" if math.isfinite(share) else ""
            out.append(f"<tr class='child{' named' if name in named else ''}'><td><a href='{series_href(prefix, name, metric, days)}'>"
                       f"{html.escape(_dims(values))}</a></td><td class='num'>{_fmt(row['actual'] / scale)}</td>"
                       f"<td class='num'>{_fmt(row['expected'] / scale)}</td><td class='num'>{_fmt(row['deviation'] / scale)}</td>"
                       f"<td class='share'>{bar}{f'{share:.0%}' if math.isfinite(share) else '–'}</td></tr>")
        out.append("</table>")
    return "".join(out)


def _what(inc: dict[str, Any]) -> str:
    word = "dropped below" if inc.get("direction") == "below" else "rose above"
    return (f"{_fmt(inc.get('actual'))} vs expected {_fmt(inc.get('expected'))} "
            f"(95% band {_fmt(inc.get('lower_95'))}–{_fmt(inc.get('upper_95'))}): {word} its forecast")


def render_series(data: SeriesData, prefix: str = "/forewarn") -> str:
    series, metric, days = data.series, data.metric, data.days
    rows = data.rows
    frame = rows[(rows["series"] == series) & (rows["metric"] == metric)]
    parent = rollup_parent(series)
    crumbs = [f"<a href='{html.escape(prefix)}/'>forewarn</a>"]
    if parent:
        crumbs.append(f"<a class='parent' href='{series_href(prefix, parent[0], metric, days)}'>{html.escape(parent[0])}</a>")
    crumbs.append(html.escape(series))
    out = [f"<div class='crumbs'>{' › '.join(crumbs)}</div>", f"<h1>{html.escape(series)} · {html.escape(metric)}</h1>"]
    if parent:
        out.append(f"<div class='muted' id='rollup-of'>a roll-up of <a href='{series_href(prefix, parent[0], metric, days)}'>"
                   f"{html.escape(parent[0])}</a> for {html.escape(_dims(parent[1]))}</div>")
    other = [f"<a href='{series_href(prefix, series, m, days)}'>{html.escape(m)}</a>" if m != metric else f"<b>{html.escape(m)}</b>"
             for m in data.metrics]
    spans = [f"<a href='{series_href(prefix, series, metric, d)}'>{d} d</a>" if d != days else f"<b>{d} d</b>" for d in (1, 3, 7, 14)]
    first, last = (frame["bucket_start"].min(), frame["bucket_start"].max()) if len(frame) else (None, None)
    out.append(f"<div class='muted'>metrics: {' · '.join(other)} &nbsp; days: {' · '.join(spans)} &nbsp; "
               f"<span id='span'>{len(frame)} buckets from {_when(str(first or ''))} to {_when(str(last or ''))} UTC "
               f"({data.intervals} intervals read)</span></div>")
    incs = data.incidents
    out.append("<div class='legend'><span><i class='swatch' style='background:#111827'></i>actual</span>"
               "<span><i class='swatch' style='background:#1d4ed8'></i>forecast</span>"
               "<span><i class='swatch' style='background:#bfdbfe'></i>95% band</span>"
               "<span><i class='swatch' style='background:#dc2626'></i>anomalous bucket / incident</span>"
               f"<span><i class='swatch' style='background:{LABEL_COLOR}'></i>label</span></div>")
    out.append(f"<figure class='wide' data-series='{html.escape(series)}' data-metric='{html.escape(metric)}'>"
               f"{chart_svg(frame, incs, width=1200, height=260, spans=_spans(incs, data.labels))}</figure>")
    latest = [i for i in incs if i.get("series") == series and i.get("metric") == metric and i.get("started")
              and len(frame) and pd_timestamp(i["started"]) >= frame["bucket_start"].min()]
    since = max((i["started"] for i in latest), default=None)
    out.append(drilldown(rows, series, metric, pd_timestamp(since) if since else None, prefix, days))
    out.append("<h2>Incidents</h2>")
    if incs:
        out.append("<table id='series-incidents'><tr><th>status</th><th>series</th><th>what happened</th><th>started</th><th>ended</th></tr>")
        for inc in incs:
            joined = "" if inc.get("series") == series else " (joined as related)"
            out.append(f"<tr class='incident-row'><td class='{html.escape(inc['status'])}'>{html.escape(inc['status'])}</td>"
                       f"<td>{html.escape(str(inc.get('series', '')))} · {html.escape(str(inc.get('metric', '')))}{joined}</td>"
                       f"<td>{_incident_link(inc, prefix, html.escape(_what(inc)))}</td><td>{_when(inc.get('started'))}</td>"
                       f"<td>{_when(inc.get('ended'))}</td></tr>")
        out.append("</table>")
    else:
        out.append("<p class='muted'>No incident among the newest ones names this series.</p>")
    out.append("<h2>Labels</h2>")
    if data.labels:
        out.append("<table id='labels'><tr><th>target</th><th>as</th><th>from</th><th>to</th><th>by</th><th>note</th></tr>")
        for lb in data.labels:
            out.append(f"<tr class='label-row'><td>{html.escape(lb.target)}</td><td>{html.escape(lb.kind)}</td>"
                       f"<td>{_when(lb.start.isoformat() if lb.start else '')}</td><td>{_when(lb.end.isoformat() if lb.end else '')}</td>"
                       f"<td>{html.escape(lb.by)}</td><td>{html.escape(lb.note)}</td></tr>")
        out.append("</table>")
    else:
        out.append("<p class='muted'>No labels on this series.</p>")
    return _page(f"forewarn · {series}", "".join(out))


def incident_rows(settings: Settings, s3: Any, facts: dict[str, Any]) -> pd.DataFrame:
    """The evidence of the incident's series (and its roll-ups) from an hour before it started
    to an hour after it ended (or on, for at most two days)."""
    from forewarn.evidence import CACHE, COLUMNS, list_evidence

    try:
        started = pd_timestamp(facts["started"]).to_pydatetime()
    except (KeyError, ValueError, TypeError):
        import pandas as pd

        return pd.DataFrame(columns=list(COLUMNS))
    lo = started - timedelta(hours=1)
    hi = lo + timedelta(hours=48)
    if facts.get("ended"):
        hi = min(hi, pd_timestamp(facts["ended"]).to_pydatetime() + timedelta(hours=1))
    return CACHE.series_rows(s3, settings.bucket, list_evidence(s3, settings.bucket, start=lo, end=hi), str(facts.get("series", "")))


def render_incident(token: str, record: dict[str, Any], rows: pd.DataFrame, prefix: str = "/forewarn") -> str:
    facts = dict(record.get("facts", {}))
    status = str(record.get("status", "open"))
    inc = {**facts, "token": token, "status": status, "ended": record.get("ended") or facts.get("ended")}
    series, metric = str(facts.get("series", "")), str(facts.get("metric", ""))
    link = f"<a href='{series_href(prefix, series, metric)}'>{html.escape(series)}</a>"
    facts_rows = [("status", f"<span class='{html.escape(status)}'>{html.escape(status)}</span>"),
                  ("episode", html.escape(str(facts.get("episode", "")))), ("series", link), ("metric", html.escape(metric)),
                  ("started", _when(facts.get("started"))), ("ended", _when(inc["ended"]) or "not yet"),
                  ("what happened", html.escape(_what(facts))),
                  ("anomaly likelihood", _fmt(facts.get("anomaly_likelihood"))), ("impact", _fmt(facts.get("impact")))]
    if facts.get("headline"):
        facts_rows.append(("headline", html.escape(str(facts["headline"]))))
    others = [d for d in facts.get("deviations") or [] if (d.get("metric"), d.get("direction")) != (metric, facts.get("direction"))]
    if others:
        facts_rows.append(("also deviating", "; ".join(f"{html.escape(str(d.get('metric')))} {html.escape(str(d.get('direction')))} "
                                                       f"from {_when(d.get('since'))}" for d in others)))
    if facts.get("contributors"):
        from forewarn.dimensions import words

        where = "".join(f"<li class='contributor'><a href='{series_href(prefix, c['series'], metric)}'>{html.escape(_dims(c.get('dimensions', {})))}"
                        f"</a>: {c.get('share', 0):.0%} of the deviation ({_fmt(c.get('deviation'))})</li>" for c in facts["contributors"])
        facts_rows.append(("where", f"{html.escape(words(facts['contributors']))}<ul id='contributors'>{where}</ul>"))
    sinks = record.get("refs", {})
    facts_rows.append(("opened in", html.escape(", ".join(f"{name} ({ref})" for name, ref in sorted(sinks.items()))) or "no sink"))
    if record.get("unconfirmed"):
        facts_rows.append(("unconfirmed", html.escape(", ".join(f"{k}: {v}" for k, v in sorted(record["unconfirmed"].items())))))
    facts_rows.append(("acknowledged", html.escape(str(record.get("acknowledged") or "no"))))
    if record.get("note"):
        facts_rows.append(("note", html.escape(str(record["note"]))))
    if facts.get("evidence"):
        facts_rows.append(("evidence", evidence_link(facts.get("evidence"), prefix, series)))
    out = [f"<div class='crumbs'><a href='{html.escape(prefix)}/'>forewarn</a> › {link} › incident</div>",
           f"<h1>Incident: {html.escape(series)} · {html.escape(metric)}</h1>",
           "<table class='facts' id='facts'>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts_rows) + "</table>"]
    related = facts.get("related") or []
    out.append("<h2>Members of the group</h2>")
    if related:
        out.append("<ul id='related'>" + "".join(f"<li><a href='{series_href(prefix, name)}'>{html.escape(name)}</a></li>"
                                                  for name in related) + "</ul>")
    else:
        out.append("<p class='muted' id='no-related'>No other series joined this incident.</p>")
    episode_like = facts.get("episode") and "|model-quality:" not in str(facts["episode"]) and series != "forewarn"
    if status == "open" and episode_like:
        out.append(_actions(inc, prefix))
    out.append("<h2>Around the incident</h2>")
    frame = rows[(rows["series"] == series) & (rows["metric"] == metric)]
    out.append(f"<figure class='wide' data-series='{html.escape(series)}' data-metric='{html.escape(metric)}'>"
               f"{chart_svg(frame, [inc], width=1200, height=260, spans=_spans([inc], []))}</figure>")
    return _page(f"forewarn · incident {series}", "".join(out))



# --------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------


def _from_airflow() -> tuple[Settings, Any, str | None]:
    """Settings and an S3 client as the DAGs see them: environment, the ``forewarn_config``
    Variable and the AWS connection, resolved in the API server."""
    from airflow.models.variable import Variable

    from forewarn.aws import AwsClients
    from forewarn.publish import dashboard_url

    try:
        text = Variable.get("forewarn_config", default_var=None)
    except Exception:  # noqa: BLE001 - no metadata database reachable: environment only
        text = None
    settings = Settings.from_json(text, {})
    try:
        clients = AwsClients.from_airflow(settings.aws_conn_id)
    except Exception as exc:  # noqa: BLE001
        log.warning("AWS connection %s not usable from the API server (%s); using its environment variable", settings.aws_conn_id, exc)
        clients = AwsClients.from_environment(settings.aws_conn_id)
    return settings, clients.s3, dashboard_url(clients.region, settings.cloudwatch_namespace)


#: The DAG whose read permission opens the page.
COMPARE_DAG_ID = "forewarn_compare"


def create_app(source: Callable[[], tuple[Settings, Any, str | None]] | None = None, auth: bool = True, prefix: str = "/forewarn"):
    """The page's FastAPI app. ``source`` gives settings, an S3 client and the dashboard URL
    (the Airflow connection by default); ``auth`` requires a user allowed to read DAGs."""
    from fastapi import Depends, FastAPI, HTTPException, Query
    from fastapi.responses import HTMLResponse, JSONResponse

    from forewarn.events import DIMENSION_KEY, DIMENSION_VALUE

    dependencies = []
    if auth:
        from airflow.api_fastapi.core_api.security import requires_access_dag

        # read access to the comparison DAG, whatever ``?dag_id=`` the caller adds: the page shows
        # every series and incident forewarn_compare produced
        dependencies.append(Depends(requires_access_dag("GET", param_dag_id=COMPARE_DAG_ID)))
    source = source or _from_airflow
    app = FastAPI(title="forewarn", dependencies=dependencies, docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/", response_class=HTMLResponse)
    def page(hours: int = Query(6, ge=1, le=48, description="hours of compared intervals to show"),
             q: str = Query("", max_length=128, description="a part of the series name"),
             dim: list[str] = Query([], max_length=5, description="key=value a roll-up series carries (repeatable)"),  # noqa: B008
             page: int = Query(1, ge=1, le=100_000, description="page of the ranked series list")) -> HTMLResponse:
        dim = [d for d in dim if d]  # the form's empty filter box
        if len(dim) > 4:
            raise HTTPException(status_code=422, detail="dim: at most 4 key=value filters")
        settings, s3, dash = source()
        for d in dim:
            key, sep, value = d.partition("=")
            if not sep or not DIMENSION_KEY.fullmatch(key) or not DIMENSION_VALUE.fullmatch(value):
                raise HTTPException(status_code=422, detail=f"dim={d!r}: use key=value, e.g. region=eu")
        data = collect(settings, s3, hours=hours, dashboard_url=dash)
        return HTMLResponse(render_page(data, prefix, query=q, dims=dim, page=page, hours=hours))

    @app.get("/api/summary")
    def summary(hours: int = Query(6, ge=1, le=48)) -> JSONResponse:
        settings, s3, dash = source()
        data = collect(settings, s3, hours=hours, dashboard_url=dash)
        window = data.evidence_window()
        return JSONResponse({
            "bucket": data.bucket,
            "intervals": len(data.intervals),
            "last_interval": _key_time(data.intervals[-1]).isoformat() if data.intervals else None,
            "series": sorted(set(window.stats()["series"])),
            "anomalous_buckets": window.anomalous_buckets(),
            "incidents": data.incidents,
            "model_quality": data.quality,
            "label_precision": {series: {"real": real, "labelled": total} for series, (real, total) in (data.precision or {}).items()},
        })

    from fastapi import Form, Request

    writers = []
    if auth:  # writing a label, an acknowledgement or a snooze is editing what forewarn_compare does
        from airflow.api_fastapi.core_api.security import GetUserDep

        writers.append(Depends(requires_access_dag("PUT", param_dag_id=COMPARE_DAG_ID)))

        def who(user: GetUserDep) -> str:
            return str(user.get_name())

        who.__annotations__ = {"user": GetUserDep, "return": str}  # real objects: this module's annotations are strings
    else:
        def who() -> str:
            return "forewarn page"

    def same_origin(request: Request) -> None:
        """A form posted from another site is refused (browsers send Origin with a POST)."""
        from urllib.parse import urlsplit

        from fastapi import HTTPException

        if request.headers.get("sec-fetch-site") == "cross-site":
            raise HTTPException(403, "a form posted from another site is not accepted here")
        origin = request.headers.get("origin")
        hosts = {request.headers.get("host", ""), *request.headers.get("x-forwarded-host", "").split(",")}
        if origin and origin != "null" and urlsplit(origin).netloc not in {h.strip() for h in hosts if h.strip()}:
            raise HTTPException(403, f"a form posted from {origin} is not accepted here")

    same_origin.__annotations__ = {"request": Request, "return": None}

    writers.append(Depends(same_origin))

    def done(what: str, key: str) -> HTMLResponse:
        return HTMLResponse(render_done(what, key, prefix))

    def refused(err: ValueError) -> HTMLResponse:
        return HTMLResponse(f"<p id='refused'>{html.escape(str(err))}</p><p><a href='{prefix}/'>back</a></p>", status_code=400)

    @app.post("/actions/ack", response_class=HTMLResponse, dependencies=writers)
    def ack(episode: str = Form(...), note: str = Form(""), by: str = Depends(who)) -> HTMLResponse:
        from forewarn.acks import AckError, parse_ack, write_ack

        settings, s3, _ = source()
        try:
            item = parse_ack({"episode": episode, "note": note, "by": by}, "the forewarn page")
        except AckError as err:
            return refused(err)
        return done(f"{item.episode}: {item.text}", write_ack(settings, s3, item))

    @app.post("/actions/label", response_class=HTMLResponse, dependencies=writers)
    def label(episode: str = Form(...), kind: str = Form(...), note: str = Form(""), by: str = Depends(who)) -> HTMLResponse:
        from forewarn.labels import LabelError, parse_label, write_label

        settings, s3, _ = source()
        try:
            item = parse_label({"target": episode, "as": kind, "note": note, "by": by}, "the forewarn page")
        except LabelError as err:
            return refused(err)
        return done(f"{item.target} labelled {item.kind} by {by}", write_label(settings, s3, item))

    @app.post("/actions/snooze", response_class=HTMLResponse, dependencies=writers)
    def snooze(episode: str = Form(...), minutes: float = Form(60), note: str = Form(""), by: str = Depends(who)) -> HTMLResponse:
        from forewarn.maintenance import WindowError, snooze_window, write_window

        settings, s3, _ = source()
        try:
            window = snooze_window(episode, minutes, by, note, where="the forewarn page")
        except WindowError as err:
            return refused(err)
        return done(f"{window.series} snoozed by {by} until {window.end.isoformat()}", write_window(settings, s3, window))

    from forewarn.compare import read_evidence

    @app.get("/evidence", response_class=HTMLResponse)
    def evidence(key: str = Query(..., pattern=r"^compare/dt=\d{4}-\d{2}-\d{2}/\d{4}\.parquet$"), series: str | None = None) -> HTMLResponse:
        settings, s3, _ = source()
        try:
            frame = read_evidence(s3, settings.bucket, key)
        except s3.exceptions.NoSuchKey:
            return HTMLResponse(f"<p>No evidence at s3://{html.escape(settings.bucket)}/{html.escape(key)}.</p>", status_code=404)
        return HTMLResponse(render_evidence(frame, key, series, prefix))

    from forewarn.events import is_series_name

    def missing(title: str, text: str) -> HTMLResponse:
        return HTMLResponse(_page(f"forewarn · {title}", f"<h1>{html.escape(title)}</h1><p id='missing'>{html.escape(text)}</p>"
                                  f"<p><a href='{html.escape(prefix)}/'>back</a></p>"), status_code=404)

    @app.get("/series", response_class=HTMLResponse)
    def series_view(name: str = Query(..., max_length=400, description="the series (a roll-up: <series>/key=value…)"),
                    metric: str = Query("", max_length=64, pattern=r"^([a-z][a-z0-9_]{0,63})?$",
                                        description="the metric drawn (default: the series' first)"),
                    days: int = Query(3, ge=1, le=MAX_DAYS, description="days of history up to the newest interval")) -> HTMLResponse:
        if not is_series_name(name):
            raise HTTPException(status_code=422, detail=f"name={name!r} is not a series name ([A-Za-z0-9_.:/-]{{1,128}}, "
                                                        "or a roll-up of one: name/key=value...)")
        settings, s3, _ = source()
        data = series_data(settings, s3, name, metric, days)
        if data is None:
            return missing(name, f"No evidence of {name} in the last {days} day{'s' if days > 1 else ''} of compared intervals.")
        if data.metric not in data.metrics:
            return missing(name, f"{name} has no evidence of {data.metric} in the last {days} days; it has {', '.join(data.metrics)}.")
        return HTMLResponse(render_series(data, prefix))

    @app.get("/incident", response_class=HTMLResponse)
    def incident_view(token: str = Query(..., pattern=r"^[0-9a-f]{64}$",
                                         description="the incident's token (its record is incidents/<token>.json)")) -> HTMLResponse:
        from forewarn.registry import read_record

        settings, s3, _ = source()
        record = read_record(settings, s3, token)
        if not record:
            return missing("Incident", f"No incident record incidents/{token}.json in s3://{settings.bucket}/.")
        return HTMLResponse(render_incident(token, record, incident_rows(settings, s3, record.get("facts", {})), prefix))

    return app
