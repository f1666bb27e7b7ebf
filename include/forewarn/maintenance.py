"""Maintenance windows: stretches when the series matching a pattern are expected to misbehave
(a deploy, a batch, a planned outage). Alerts that begin inside one are recorded but not sent,
and its buckets are kept out of training. One JSON object each under ``maintenance/`` (so any
tool can write them), or ``forewarn maintenance``:

    {"version": 1, "series": "payments.*", "from": "2026-12-05T02:00:00Z", "to": "2026-12-05T03:00:00Z",
     "note": "database upgrade"}
    {"version": 1, "series": "etl.*", "rrule": "FREQ=WEEKLY;BYDAY=SU;BYHOUR=3;BYMINUTE=0",
     "duration_minutes": 90, "tz": "Europe/Berlin", "note": "weekly batch"}
    {"version": 1, "series": "*", "cron": "0 4 * * *", "duration_minutes": 20, "tz": "America/New_York"}

``series`` is a shell-style pattern (``fnmatch``) over series names. A recurring window (RFC 5545
``rrule``, or a five-field ``cron``) starts at each occurrence in its time zone (``tz``, IANA
name; default UTC), so a daily 04:00 window stays at 04:00 local time across daylight-saving
changes; ``from``/``to`` then bound the recurrence (optional).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from forewarn.config import Settings
from forewarn.events import utc_field
from forewarn.layout import MAINTENANCE_PREFIX

log = logging.getLogger(__name__)

WINDOW_VERSION = 1
#: A recurring window's occurrences are looked for this far before a span (a window that began
#: earlier and is still running counts).
MAX_DURATION = timedelta(days=7)


class WindowError(ValueError):
    """A window that cannot be used; the message names the object and the field."""


@dataclass(frozen=True)
class Window:
    series: str
    start: datetime | None = None
    end: datetime | None = None
    rrule: str | None = None
    cron: str | None = None
    duration: timedelta | None = None
    tz: str = "UTC"
    note: str = ""

    @property
    def recurring(self) -> bool:
        return bool(self.rrule or self.cron)

    def matches(self, series: str) -> bool:
        return fnmatch.fnmatchcase(series, self.series)

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"version": WINDOW_VERSION, "series": self.series, "note": self.note, "tz": self.tz,
                               "from": self.start.isoformat() if self.start else None, "to": self.end.isoformat() if self.end else None}
        if self.rrule:
            doc["rrule"] = self.rrule
        if self.cron:
            doc["cron"] = self.cron
        if self.duration is not None:
            doc["duration_minutes"] = self.duration.total_seconds() / 60
        return doc

    @property
    def key(self) -> str:
        ident = json.dumps({k: v for k, v in self.to_doc().items() if k != "note"}, sort_keys=True)
        return f"{MAINTENANCE_PREFIX}{hashlib.sha256(ident.encode()).hexdigest()[:32]}.json"

    def occurrences(self, first: datetime, last: datetime) -> list[tuple[datetime, datetime]]:
        """The window's stretches ``[start, end)`` that overlap ``[first, last]`` (UTC)."""
        if not self.recurring:
            if self.start is None or self.end is None:
                return []
            return [(self.start, self.end)] if self.start <= last and self.end > first else []
        if self.duration is None:
            return []
        zone = ZoneInfo(self.tz)
        lo = max(first - self.duration, self.start) if self.start else first - self.duration
        hi = min(last, self.end) if self.end else last
        if hi < lo:
            return []
        starts: list[datetime] = []
        if self.rrule:
            from dateutil.rrule import rrulestr

            anchor = (self.start or lo - MAX_DURATION).astimezone(zone).replace(second=0, microsecond=0)
            rule = rrulestr(self.rrule, dtstart=anchor.replace(tzinfo=None))
            starts = [t.replace(tzinfo=zone).astimezone(UTC)
                      for t in rule.between(lo.astimezone(zone).replace(tzinfo=None), hi.astimezone(zone).replace(tzinfo=None), inc=True)]
        else:
            from croniter import croniter

            it = croniter(self.cron, lo.astimezone(zone) - timedelta(seconds=1))
            while True:
                t = it.get_next(datetime)
                if t > hi.astimezone(zone):
                    break
                starts.append(t.astimezone(UTC))
        spans = [(s, s + self.duration) for s in starts]
        return [(s, e) for s, e in spans if s <= last and e > first]

    def covers(self, series: str, moment: datetime) -> bool:
        return self.matches(series) and bool(self.occurrences(moment, moment))


def _time(doc: dict[str, Any], field: str, where: str) -> datetime | None:
    return utc_field(doc, field, where, WindowError)


def parse_window(doc: Any, where: str = "window") -> Window:
    """A window from its JSON document; ``WindowError`` names the field that is wrong."""
    if not isinstance(doc, dict):
        raise WindowError(f"{where}: a maintenance window is a JSON object, not {type(doc).__name__}")
    series = doc.get("series")
    if not isinstance(series, str) or not series or len(series) > 200:
        raise WindowError(f"{where}: 'series' must be a pattern over series names, e.g. 'payments.*' or '*'")
    tz = str(doc.get("tz") or "UTC")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise WindowError(f"{where}: 'tz' is {tz!r}, not an IANA time zone (e.g. Europe/Berlin)") from err
    start, end = _time(doc, "from", where), _time(doc, "to", where)
    if start and end and end <= start:
        raise WindowError(f"{where}: 'to' ({end.isoformat()}) is not after 'from' ({start.isoformat()})")
    rrule, cron = doc.get("rrule") or None, doc.get("cron") or None
    if rrule and cron:
        raise WindowError(f"{where}: give 'rrule' or 'cron', not both")
    duration = None
    if rrule or cron:
        minutes = doc.get("duration_minutes")
        if not isinstance(minutes, int | float) or isinstance(minutes, bool) or not 0 < minutes <= MAX_DURATION.total_seconds() / 60:
            raise WindowError(f"{where}: a recurring window needs 'duration_minutes' between 1 and {int(MAX_DURATION.total_seconds() // 60)}")
        duration = timedelta(minutes=float(minutes))
        if rrule:
            from dateutil.rrule import rrulestr

            try:
                rrulestr(str(rrule), dtstart=datetime(2026, 1, 1))
            except (ValueError, TypeError) as err:
                raise WindowError(f"{where}: 'rrule' {rrule!r} is not an RFC 5545 rule ({err})") from err
        else:
            from croniter import croniter

            if not croniter.is_valid(str(cron)):
                raise WindowError(f"{where}: 'cron' {cron!r} is not a five-field cron expression (e.g. '0 4 * * *')")
    elif start is None or end is None:
        raise WindowError(f"{where}: a one-off window needs 'from' and 'to' (or give 'rrule' or 'cron' and 'duration_minutes')")
    return Window(series=series, start=start, end=end, rrule=str(rrule) if rrule else None, cron=str(cron) if cron else None,
                  duration=duration, tz=tz, note=str(doc.get("note") or ""))


#: The longest snooze: a week (a longer silence is a maintenance window, with a note).
MAX_SNOOZE = timedelta(days=7)


def snooze_window(target: str, minutes: float, by: str, note: str = "", now: datetime | None = None,
                  where: str = "snooze") -> Window:
    """A snooze: a one-off window over one series (``target``: the series, or an episode as
    incidents name it, ``series|YYYY-MM-DDTHH:MM``) from ``now`` for ``minutes``."""
    from forewarn.events import is_series_name

    series = str(target or "").split("|", 1)[0]
    if not is_series_name(series):
        raise WindowError(f"{where}: {series!r} is not a series name ([A-Za-z0-9_.:/-]{{1,128}}) or an episode (series|YYYY-MM-DDTHH:MM)")
    if isinstance(minutes, bool) or not isinstance(minutes, int | float) or not 0 < minutes <= MAX_SNOOZE.total_seconds() / 60:
        raise WindowError(f"{where}: 'minutes' is {minutes!r}; give between 1 and {int(MAX_SNOOZE.total_seconds() // 60)} (a week)")
    start = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    text = f"snoozed by {by}" + (f": {note}" if note else "")
    return parse_window({"series": series, "from": start.isoformat(), "to": (start + timedelta(minutes=minutes)).isoformat(),
                         "note": text}, where)


def write_window(settings: Settings, s3: Any, window: Window) -> str:
    s3.put_object(Bucket=settings.bucket, Key=window.key, Body=json.dumps(window.to_doc(), sort_keys=True).encode(),
                  ContentType="application/json")
    return window.key


def read_windows(settings: Settings, s3: Any) -> tuple[list[Window], list[str]]:
    """Every window under ``maintenance/`` and what was wrong with those that could not be used
    (logged, never fatal)."""
    from forewarn.documents import read_documents

    return read_documents(s3, settings.bucket, MAINTENANCE_PREFIX, parse_window, WindowError, "maintenance window")



def window_stretches(windows: list[Window], first: datetime, last: datetime) -> list[dict[str, Any]]:
    """The windows' stretches inside ``[first, last]``, each with its series pattern: what
    training keeps out of every series the pattern matches (every metric)."""
    out = []
    for window in windows:
        out += [{"pattern": window.series, "first": max(s, first).isoformat(), "last": min(e - timedelta(seconds=1), last).isoformat(),
                 "window": window.key} for s, e in window.occurrences(first, last)]
    return out
