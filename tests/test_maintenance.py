"""Maintenance windows: their rules and their occurrences across daylight-saving changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from forewarn.maintenance import WindowError, parse_window, window_stretches


@pytest.mark.parametrize(("doc", "says"), [
    ("x", "a maintenance window is a JSON object"),
    ({"from": "2026-12-05T02:00Z", "to": "2026-12-05T03:00Z"}, "'series' must be a pattern"),
    ({"series": "*"}, "a one-off window needs 'from' and 'to'"),
    ({"series": "*", "from": "2026-12-05T03:00Z", "to": "2026-12-05T02:00Z"}, "is not after 'from'"),
    ({"series": "*", "cron": "0 4 * * *"}, "needs 'duration_minutes'"),
    ({"series": "*", "cron": "at four", "duration_minutes": 5}, "not a five-field cron expression"),
    ({"series": "*", "rrule": "FREQ=SOMETIMES", "duration_minutes": 5}, "not an RFC 5545 rule"),
    ({"series": "*", "rrule": "FREQ=DAILY", "cron": "0 4 * * *", "duration_minutes": 5}, "not both"),
    ({"series": "*", "cron": "0 4 * * *", "duration_minutes": 5, "tz": "Mars/Olympus"}, "not an IANA time zone"),
])
def test_a_window_that_cannot_be_used_names_its_field(doc, says):
    with pytest.raises(WindowError, match="maintenance/w.json") as err:
        parse_window(doc, "s3://b/maintenance/w.json")
    assert says in str(err.value)


def test_a_recurring_window_keeps_its_local_time_across_daylight_saving():
    daily = parse_window({"series": "etl.*", "cron": "0 4 * * *", "duration_minutes": 20, "tz": "America/New_York"})
    starts = [s for s, _ in daily.occurrences(datetime(2026, 3, 7, tzinfo=UTC), datetime(2026, 3, 10, tzinfo=UTC))]
    assert [s.hour for s in starts] == [9, 8, 8]  # 04:00 EST, then EDT from 8 March
    weekly = parse_window({"series": "etl.*", "rrule": "FREQ=WEEKLY;BYDAY=SU;BYHOUR=3;BYMINUTE=0", "duration_minutes": 90,
                           "tz": "Europe/Berlin"})
    spans = weekly.occurrences(datetime(2026, 3, 20, tzinfo=UTC), datetime(2026, 4, 6, tzinfo=UTC))
    assert [(s.day, s.hour, (e - s).seconds // 60) for s, e in spans] == [(22, 2, 90), (29, 1, 90), (5, 1, 90)]
    assert weekly.covers("etl.nightly", datetime(2026, 3, 29, 2, 29, tzinfo=UTC))
    assert not weekly.covers("etl.nightly", datetime(2026, 3, 29, 2, 30, tzinfo=UTC))
    assert not weekly.covers("payments.total", datetime(2026, 3, 29, 1, 30, tzinfo=UTC))


def test_a_one_off_window_and_the_stretches_training_keeps_out():
    once = parse_window({"series": "payments.*", "from": "2026-12-05T02:00:00Z", "to": "2026-12-05T03:00:00Z", "note": "db upgrade"})
    assert once.covers("payments.total", datetime(2026, 12, 5, 2, 59, tzinfo=UTC))
    assert not once.covers("payments.total", datetime(2026, 12, 5, 3, 0, tzinfo=UTC))
    stretches = window_stretches([once], datetime(2026, 12, 5, 2, 30, tzinfo=UTC), datetime(2026, 12, 6, tzinfo=UTC))
    assert stretches == [{"pattern": "payments.*", "first": "2026-12-05T02:30:00+00:00", "last": "2026-12-05T02:59:59+00:00",
                          "window": once.key}]
    assert parse_window(once.to_doc()).key == once.key


@pytest.mark.parametrize(("target", "minutes", "says"), [
    ("bad series!", 30, "not a series name"),
    ("orders.count", 0, "'minutes' is 0; give between 1 and 10080"),
    ("orders.count", 20000, "'minutes' is 20000"),
    ("orders.count", True, "'minutes' is True"),
])
def test_a_snooze_that_cannot_be_used_says_why(target, minutes, says):
    from forewarn.maintenance import snooze_window

    with pytest.raises(WindowError, match="forewarn_snooze params") as err:
        snooze_window(target, minutes, "alice", where="forewarn_snooze params")
    assert says in str(err.value)


def test_a_snooze_of_an_episode_silences_its_series_from_now():
    from forewarn.maintenance import snooze_window

    now = datetime(2026, 12, 6, 3, 7, 30, 123, tzinfo=UTC)
    window = snooze_window("orders.count|2026-12-06T02:45", 90, "alice", "on it", now)
    assert (window.series, window.start, window.end) == ("orders.count", now.replace(microsecond=0), now.replace(microsecond=0) + timedelta(minutes=90))
    assert window.note == "snoozed by alice: on it" and not window.recurring
