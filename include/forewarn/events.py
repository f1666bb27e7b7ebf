"""The event schema: one JSON object per line, as producers put it on the Kinesis stream.

```json
{"event_id": "5f0c9d2e4b1a7c3e9d8f6a2b1c0d4e7f", "series": "orders.count",
 "event_time": "2026-11-27T02:03:04.512Z", "value": 42.5, "source": "shop-eu-1"}
```

| field        | type                  | rule                                                         |
|--------------|-----------------------|--------------------------------------------------------------|
| `event_id`   | string, 1-128 chars, or integer | unique per event in its series; copies are counted once; not only whitespace (space, tab, CR, LF); an integer of at most 15 digits (`7`, `-42`) is the string of its digits (`7` and `"7"` are one id); no other number (`1.5`, `1.0`, `1e2`, 16 digits), no `true`, object or array |
| `series`     | string                | `[A-Za-z0-9_.:/-]{1,128}`; becomes a CloudWatch dimension   |
| `event_time` | ISO 8601 with offset  | when it happened (not when it arrived); buckets use it; offset within ±14:00 |
| `value`      | finite number         | the measurement (amount, latency, reading; 1 for a pure count) |
| `dimensions` | object, optional      | at most 5 keys `[a-z][a-z0-9_]{0,31}`, each a string `[A-Za-z0-9_.:-]{1,64}`, e.g. `{"region": "eu", "channel": "app"}` |
| other keys   | any                   | kept in the landing zone, ignored by the aggregation         |

A line must be a JSON object (``invalid_json`` otherwise, an array, string, number or null
included) written as RFC 8259 has it: a bare ``NaN`` or ``Infinity`` anywhere in it, or a
trailing comma, is ``invalid_json`` too (Athena's parser refuses them). One leading byte order
mark (U+FEFF, which producers on Windows write) is skipped; a line of nothing else, or of JSON
whitespace only, is blank: no event (:func:`is_blank_line`). A line breaking a rule is set aside
under the errors prefix with one of the reasons in :data:`REJECT_REASONS`, and counted in the run
summary.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Any

from forewarn.config import MAX_ABS_VALUE

SERIES_PATTERN = re.compile(r"[A-Za-z0-9_.:/-]{1,128}")  # whole names: fullmatch
#: An event time: ISO 8601 with a date, a time and an offset (``Z``, ``+hh:mm``, ``+hhmm`` or
#: ``+hh``); without one the zone would be a guess (``sql/parsed_lines.sql`` applies the same
#: pattern). The offset is at most 14:00 either way, its minutes 00-59: Athena (Trino) has no zone
#: beyond ±14:00 (nor has the world), so a larger offset (``+18:00``, ``+25:00``) is
#: ``bad_event_time`` in every engine, not an instant one engine computes and another refuses.
EVENT_TIME_PATTERN = re.compile(
    r"[1-9][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9]([.][0-9]+)?)?(Z|[+-](0[0-9]|1[0-3])(:?[0-5][0-9])?|[+-]14(:?00)?)")
#: JSON's own whitespace (RFC 8259: space, tab, line feed, carriage return): an ``event_id`` of
#: nothing else (or empty) is ``missing_event_id``, and a line of nothing else is blank; other
#: characters (a no-break space, a form feed) count.
JSON_WHITESPACE = " \t\n\r"
#: A value given as a string must hold a number as JSON writes one (``"12.5"``, ``"-1e3"``);
#: engines cast other text (`` 12``, ``1_000``, ``0x10``, other scripts' digits) apart.
JSON_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)([.][0-9]+)?([eE][-+]?[0-9]+)?")
#: What reading bytes that were no UTF-8 leaves in their place: such a line is ``invalid_json``.
REPLACEMENT = "\ufffd"
#: A byte order mark: one at the start of a line is skipped (producers on Windows write them).
BOM = "\ufeff"
#: An event's optional ``dimensions``: a few low-cardinality keys and their values.
MAX_DIMENSIONS = 5
DIMENSION_KEY = re.compile(r"[a-z][a-z0-9_]{0,31}")  # whole keys and values: fullmatch
DIMENSION_VALUE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")

#: Why a landed line is set aside, as classified_events.sql writes it.
REJECT_REASONS = (
    "invalid_json",
    "missing_event_id",
    "bad_event_id",
    "bad_series",
    "bad_event_time",
    "bad_value",
    "value_out_of_range",
    "bad_dimensions",
    "too_late",
    "future_event_time",
    "conflicting_duplicate",
)


def iso_time(epoch: float) -> str:
    """Milliseconds, UTC, with a ``Z``: ``2026-11-27T02:03:04.512Z``."""
    moment = datetime.fromtimestamp(round(epoch, 3), tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def event_line(event_id: str, series: str, epoch: float, value: float, **extra: Any) -> str:
    """The JSON line of one event (no trailing newline)."""
    doc: dict[str, Any] = {"event_id": event_id, "series": series, "event_time": iso_time(epoch), "value": value}
    doc.update(extra)
    return json.dumps(doc, separators=(",", ":"), allow_nan=False)


def utc_field(doc: dict[str, Any], field: str, where: str, error: type[ValueError] = ValueError) -> datetime | None:
    """``doc[field]`` as an aware UTC time (ISO 8601; no offset means UTC), None when absent or
    empty; else ``error`` naming the field (an operator's label or window, a run param)."""
    value = doc.get(field)
    if value in (None, ""):
        return None
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError as err:
        raise error(f"{where}: '{field}' is {value!r}, not an ISO 8601 time (e.g. 2026-11-27T10:00:00Z)") from err
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def is_valid_series(name: str) -> bool:
    """An event's ``series`` (what producers send)."""
    return isinstance(name, str) and bool(SERIES_PATTERN.fullmatch(name))


#: A series forewarn judges: an event's series, or a roll-up of it by dimension values
#: (``<series>/region=eu/channel=app``; ``=`` is in no event's series, so they never collide).
SERIES_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.:/-]{1,128}(/[a-z][a-z0-9_]{0,31}=[A-Za-z0-9_.:-]{1,64}){0,3}")


def is_series_name(name: str) -> bool:
    """A series forewarn judges (an event's series or a roll-up of it): what labels, windows
    and acknowledgements may name."""
    return isinstance(name, str) and bool(SERIES_NAME_PATTERN.fullmatch(name))


def dimensions_problem(dimensions: Any) -> str | None:
    """What is wrong with an event's ``dimensions`` (None: nothing; absent, null or ``{}`` is
    none). A key twice in one object is refused too, by the SQL, which sees the raw line (a
    parsed ``dict`` cannot show it)."""
    if dimensions is None:
        return None
    if not isinstance(dimensions, dict):
        return f"'dimensions' must be an object of key: string, not {type(dimensions).__name__}"
    if len(dimensions) > MAX_DIMENSIONS:
        return f"'dimensions' has {len(dimensions)} keys; at most {MAX_DIMENSIONS}"
    for key, value in dimensions.items():
        if not isinstance(key, str) or not DIMENSION_KEY.fullmatch(key):
            return f"dimension key {key!r} must match [a-z][a-z0-9_]{{0,31}}"
        if not isinstance(value, str) or not DIMENSION_VALUE.fullmatch(value):
            return f"dimension {key}={value!r} must be a string of 1-64 of [A-Za-z0-9_.:-]"
    return None


def is_blank_line(line: str) -> bool:
    """A landed line that is no event: past one leading byte order mark, empty or only JSON
    whitespace (a CRLF line's lone CR too), as ``sql/parsed_lines.sql`` skips it."""
    text = line[len(BOM):] if line.startswith(BOM) else line
    return not text.strip(JSON_WHITESPACE)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class _FirstKeys(dict):
    """A parsed JSON object that kept the first of a key written twice, as the SQL's JSON paths
    read it, and remembers that one was, and whether a value it dropped held half a surrogate
    pair (what it kept, ``_has_lone_surrogate`` reads)."""

    repeated = False
    surrogate = False


def _first_keys(pairs: list[tuple[str, Any]]) -> _FirstKeys:
    out = _FirstKeys()
    for key, value in pairs:
        if key in out:
            out.repeated = True
            out.surrogate = out.surrogate or _has_lone_surrogate(value)
        else:
            out[key] = value
    return out


def _has_lone_surrogate(doc: Any) -> bool:
    """Whether a string of ``doc`` holds half of a surrogate pair (an escaped ``\\ud800`` alone),
    which no UTF-8 text can: the SQL refuses the line (``sql/parsed_lines.sql``)."""
    if isinstance(doc, str):
        return any("\ud800" <= c <= "\udfff" for c in doc)
    if isinstance(doc, dict):
        return getattr(doc, "surrogate", False) or any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in doc.items())
    if isinstance(doc, list):
        return any(_has_lone_surrogate(v) for v in doc)
    return False


def validate_line(line: str) -> str | None:
    """The reject reason for a landed line, or ``None`` when it is a usable event (time rules
    aside), as ``sql/parsed_lines.sql`` decides it: one leading byte order mark is skipped; the
    rest must be a JSON object (``invalid_json``: not JSON, a bare ``NaN`` or ``Infinity`` in it,
    half a surrogate pair, a U+FFFD (what reading bytes that were no UTF-8 leaves), or an array,
    string, number or null), then :func:`validate` applies to it with the first of a key written
    twice, as the SQL reads it (a key twice in ``dimensions`` is ``bad_dimensions``). A blank
    line (:func:`is_blank_line`) is no event (the SQL skips it; here it is ``invalid_json``:
    there is nothing to send)."""
    text = line[len(BOM):] if line.startswith(BOM) else line
    if REPLACEMENT in text:
        return "invalid_json"
    try:
        # a second byte order mark is refused (not JSON whitespace)
        doc = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_first_keys)
    except (ValueError, RecursionError):
        return "invalid_json"
    reason = validate(doc)
    if reason is None and isinstance(doc, dict) and getattr(doc.get("dimensions"), "repeated", False):
        return "bad_dimensions"
    return reason


def _is_plain_integer(value: Any) -> bool:
    """Whether ``value`` is an integer of 1 to 15 digits (a double holds it exactly), not a bool:
    the SQL's JSON text ``-?[0-9]{1,15}`` (json.loads makes 1.0 and 1e2 floats)."""
    return isinstance(value, int) and not isinstance(value, bool) and -10**15 < value < 10**15


def validate(doc: Any) -> str | None:
    """The reject reason for a parsed event, or ``None`` when it is usable (time rules aside).
    A ``doc`` that is not a JSON object (a list, string, number, None) is ``invalid_json``.

    The SQL is the authority on landed data; this mirrors it for producers that want to refuse a
    bad event before sending it (:func:`validate_line` for a line as it would land)."""
    if not isinstance(doc, dict) or _has_lone_surrogate(doc):  # half a surrogate pair: no UTF-8 can write it
        return "invalid_json"
    event_id = doc.get("event_id")
    if event_id is None or (isinstance(event_id, str) and not event_id.strip(JSON_WHITESPACE)):
        return "missing_event_id"
    # 7 is the id "7" (every engine writes its digits alike); other numbers they write apart (1.50, 1e2)
    if not _is_plain_integer(event_id) and (not isinstance(event_id, str) or len(event_id) > 128):
        return "bad_event_id"
    series = doc.get("series")
    if not isinstance(series, str) or not is_valid_series(series):
        return "bad_series"
    event_time = doc.get("event_time")
    if not isinstance(event_time, str) or not EVENT_TIME_PATTERN.fullmatch(event_time):
        return "bad_event_time"
    try:
        datetime.fromisoformat(event_time.replace("Z", "+00:00"))
    except ValueError:
        return "bad_event_time"
    value = doc.get("value")
    if isinstance(value, str) and not JSON_NUMBER.fullmatch(value):  # engines cast other text apart
        return "bad_value"
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):  # an integer of 400 digits is past a double
        return "bad_value"
    if isinstance(value, bool) or not math.isfinite(number):
        return "bad_value"
    if abs(number) > MAX_ABS_VALUE:
        return "value_out_of_range"
    if dimensions_problem(doc.get("dimensions")) is not None:
        return "bad_dimensions"
    return None
