"""Holiday calendars: the days a series is expected to behave unlike its ordinary weekday (a
public holiday of its country, an event of your own), in the series' own time zone. Declared
per series in the settings file (``holidays: US``, ``events: [2026-11-27]``, ``tz:
America/New_York``); training uses them twice:

- **kept out of the history**: a holiday's buckets are set missing before fitting, as an
  episode's are, so a quiet Christmas does not pull the next weeks' forecasts down;
- **a holiday ahead behaves like a Sunday** (``sunday_band``): for the buckets of a holiday in
  the horizon, the band is widened to hold the latest ordinary Sunday's value at the same local
  time (with the model's band scaled to it) as well as the model's own, so the detector softens: an actual that behaves like
  the weekday, or like a Sunday, is not anomalous; one outside both still is.

Public holidays come from the ``holidays`` package (country code, optionally a subdivision:
``US-CA``, ``DE-BY``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd


class CalendarError(ValueError):
    """A calendar that cannot be used: the message says which part."""


@dataclass(frozen=True)
class Calendar:
    country: str | None = None  # holidays' code, optionally with a subdivision: "US", "US-CA", "DE-BY"
    events: tuple[date, ...] = ()
    tz: str = "UTC"

    def __bool__(self) -> bool:
        return bool(self.country or self.events)

    def days(self, first: date, last: date) -> set[date]:
        """The calendar's days in ``[first, last]``."""
        out = {d for d in self.events if first <= d <= last}
        if self.country:
            out |= {d for d in _public_holidays(self.country, tuple(range(first.year, last.year + 1))) if first <= d <= last}
        return out

    def on_holiday(self, index: pd.DatetimeIndex) -> np.ndarray:
        """For each bucket (UTC starts), whether its local date is one of the calendar's days."""
        if not self or index.size == 0:
            return np.zeros(index.size, dtype=bool)
        local = index.tz_convert(ZoneInfo(self.tz))
        dates = pd.Index(local.date)
        return np.asarray(dates.isin(list(self.days(min(dates), max(dates)))), dtype=bool)


def check_country(code: str) -> str | None:
    """Why ``code`` is not a calendar the ``holidays`` package has (None: it is)."""
    import holidays

    country, _, subdiv = str(code).partition("-")
    supported = holidays.list_supported_countries()
    if country not in supported:
        return f"is {code!r}, not a country code the holidays package knows (ISO 3166-1 alpha-2, e.g. US, DE, GB)"
    if subdiv and subdiv not in supported[country]:
        return f"is {code!r}, but {country} has no subdivision {subdiv!r} (e.g. {', '.join(supported[country][:5])})"
    return None


@lru_cache(maxsize=64)
def _public_holidays(code: str, years: tuple[int, ...]) -> frozenset[date]:
    import holidays

    country, _, subdiv = code.partition("-")
    return frozenset(holidays.country_holidays(country, subdiv=subdiv or None, years=list(years)))


def hold_value(lower: dict[float, np.ndarray], upper: dict[float, np.ndarray], i: int, mean: float, value: float,
               keep_widths: bool = True) -> None:
    """Widen, in place, bucket ``i``'s bands so they also hold ``value``, with the model's band
    around it: scaled to it when both it and the point forecast ``mean`` are a positive level;
    otherwise each side's width kept around it (``keep_widths``) or the value alone."""
    ratio = value / mean if mean > 0 and value >= 0 else None
    for level in lower:
        if ratio is not None:
            low, high = lower[level][i] * ratio, upper[level][i] * ratio
        elif keep_widths:
            low, high = value - max(mean - lower[level][i], 0.0), value + max(upper[level][i] - mean, 0.0)
        else:
            low = high = value
        lower[level][i], upper[level][i] = min(lower[level][i], low), max(upper[level][i], high)


def sunday_band(values: np.ndarray, index: pd.DatetimeIndex, future: pd.DatetimeIndex, calendar: Calendar,
                mean: np.ndarray, lower: dict[float, np.ndarray], upper: dict[float, np.ndarray]) -> int:
    """Widen, in place, the bands of the ``future`` buckets that fall on a holiday so they also
    hold the latest ordinary (not a holiday) Sunday's value at the same local time, from the
    history ``values`` on ``index``, with the model's band around it: scaled to it (a positive
    level), or its sides' widths kept (any other). The point forecast stays the model's. Returns how many buckets were widened."""
    ahead = calendar.on_holiday(future)
    if not ahead.any() or index.size == 0:
        return 0
    zone = ZoneInfo(calendar.tz)
    local = index.tz_convert(zone)
    ordinary_sunday = (local.dayofweek == 6) & ~calendar.on_holiday(index) & np.isfinite(values)
    if not ordinary_sunday.any():
        return 0
    clock = (local.hour * 60 + local.minute).to_numpy()
    day = pd.Index(local.date)
    widened = 0
    for i in np.flatnonzero(ahead):
        t = future[i].tz_convert(zone)
        same = ordinary_sunday & (clock == t.hour * 60 + t.minute)
        if not same.any():
            continue
        last = np.flatnonzero(same & (day == day[same][-1]))[-1]
        hold_value(lower, upper, int(i), float(mean[i]), float(values[last]))
        widened += 1
    return widened
