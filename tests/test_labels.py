"""Operators' labels: their rules, and what training does with them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from forewarn.labels import LabelError, parse_label, verdict
from forewarn.train import rebase_history

T = datetime(2026, 11, 27, 10, tzinfo=UTC)


@pytest.mark.parametrize(("doc", "says"), [
    ([], "a label is a JSON object"),
    ({"as": "real"}, "'target' must be an episode"),
    ({"target": "bad series!", "as": "real"}, "not a series name"),
    ({"target": "s", "as": "maybe"}, "'as' is 'maybe'; choose one of real, not_anomaly, expected, new_normal"),
    ({"target": "s", "as": "real", "from": "yesterday"}, "'from' is 'yesterday', not an ISO 8601 time"),
    ({"target": "s", "as": "real", "from": "2026-11-27T10:00Z", "to": "2026-11-27T09:00Z"}, "'to' (2026-11-27T09:00:00+00:00) is not after"),
    ({"target": "s", "as": "new_normal"}, "needs 'from'"),
    ({"target": "s|2026-11-18T02:00", "as": "expected", "recurs": "monthly"}, "'recurs' is 'monthly'; choose one of daily, weekly"),
    ({"target": "s|2026-11-18T02:00", "as": "real", "recurs": "weekly"}, "'recurs' goes with 'as': 'expected'"),
    ({"target": "s", "as": "expected", "recurs": "daily", "from": "2026-11-18T02:00Z"}, "needs 'from' and 'to' (one occurrence)"),
    ({"target": "s", "as": "expected", "recurs": "daily", "from": "2026-12-01T00:00Z", "to": "2026-12-02T06:00Z"},
     "a daily recurrence must be shorter than a day"),
])
def test_a_label_that_cannot_be_used_names_its_field(doc, says):
    with pytest.raises(LabelError, match="labels/x.json") as err:
        parse_label(doc, "s3://b/labels/x.json")
    assert says in str(err.value)


def test_the_newest_label_that_speaks_of_a_span_decides():
    episode = parse_label({"target": "orders.count|2026-11-27T10:00", "as": "not_anomaly", "created": "2026-11-27T11:00Z"})
    ranged = parse_label({"target": "orders.count", "as": "real", "from": "2026-11-27T09:00Z", "to": "2026-11-27T12:00Z",
                          "created": "2026-11-27T12:00Z"})
    labels = [episode, ranged]
    assert verdict(labels, "orders.count", T, T + timedelta(hours=1), "orders.count|2026-11-27T10:00") is ranged
    assert verdict(labels, "orders.count", T + timedelta(hours=3), T + timedelta(hours=4)) is None  # after the range
    assert verdict(labels, "other", T, T + timedelta(hours=1)) is None
    assert verdict([episode], "orders.count", T, T, "orders.count|2026-11-27T10:00") is episode
    assert episode.key == parse_label(episode.to_doc()).key  # the same label written twice is one object


def test_a_new_normal_moves_the_history_before_it_to_the_new_level():
    index = pd.date_range("2026-11-20", periods=7 * 96, freq="15min", tz="UTC")
    daily = 1 + 0.3 * np.sin(2 * np.pi * np.arange(index.size) / 96)
    at = index[-24]  # the last six hours are 1.5 times the old level
    values = 100 * daily * np.where(index >= at, 1.5, 1.0)
    out, factor = rebase_history(values, index, at, 900, multiplicative=True)
    assert factor == pytest.approx(1.5)
    np.testing.assert_allclose(out, 150 * daily)
    gauge = 20 + 3 * daily + np.where(index >= at, 5.0, 0.0)  # a statistic: the level moves by 5
    shifted, shift = rebase_history(gauge, index, at, 900, multiplicative=False)
    assert shift == pytest.approx(5.0)
    np.testing.assert_allclose(shifted, 25 + 3 * daily)
    assert rebase_history(values, index, index[-1] + pd.Timedelta("1h"), 900, True) == (values, None)  # nothing after it yet


@pytest.mark.stack
@pytest.mark.airflow
def test_a_label_from_the_airflow_trigger_form_reaches_training(clients, airflow_db, monkeypatch):
    """The forewarn_label DAG, triggered as the UI's form triggers it, writes the label that
    training and the comparison read."""
    import json

    from airflow.dag_processing.dagbag import DagBag

    from forewarn.labels import read_labels

    from conftest import ROOT
    from helpers import fresh_settings

    settings = fresh_settings(clients)
    monkeypatch.setenv("AIRFLOW_VAR_FOREWARN_CONFIG", json.dumps({"bucket": settings.bucket}))
    dag = DagBag(dag_folder=str(ROOT / "dags" / "forewarn_label.py")).dags["forewarn_label"]
    conf = {"target": "orders.count", "as": "expected", "from": "2026-11-27T10:00:00Z", "to": "2026-11-27T11:00:00Z",
            "note": "weekly batch"}
    assert dag.test(run_conf=conf).state == "success"
    assert dag.test(run_conf=conf).state == "success"  # the same label again: still one object
    labels, errors = read_labels(settings, clients.s3)
    assert errors == [] and len(labels) == 1
    label = labels[0]
    assert (label.target, label.kind, label.note) == ("orders.count", "expected", "weekly batch")
    assert label.start == T and label.end == T + timedelta(hours=1) and label.by


def test_weekly_precision_counts_the_newest_label_of_each_episode_of_the_past_week():
    from forewarn.labels import weekly_precision

    def lb(target, kind, created):
        return parse_label({"target": target, "as": kind, "created": created})

    labels = [lb("orders.count|2026-11-26T10:00", "not_anomaly", "2026-11-26T11:00Z"),
              lb("orders.count|2026-11-26T10:00", "real", "2026-11-26T12:00Z"),  # changed their mind: real
              lb("orders.count|2026-11-25T08:00", "expected", "2026-11-25T09:00Z"),
              lb("orders.count|2026-11-27T09:00", "new_normal", "2026-11-27T09:30Z"),
              lb("orders.count|2026-11-10T09:00", "real", "2026-11-10T09:30Z"),  # older than a week
              lb("temp|2026-11-27T01:00", "not_anomaly", "2026-11-27T02:00Z"),
              lb("temp", "real", "2026-11-27T02:00Z")]  # a series label: no episode to count
    assert weekly_precision(labels, T) == {"orders.count": (2, 3), "temp": (0, 1)}
    assert weekly_precision(labels, T, lambda s: s == "temp") == {"temp": (0, 1)}


@pytest.mark.stack
def test_a_label_or_window_that_cannot_be_used_is_set_aside_with_its_reason(clients):
    from forewarn.labels import read_labels, write_label
    from forewarn.maintenance import read_windows

    from helpers import fresh_settings

    settings = fresh_settings(clients)
    write_label(settings, clients.s3, parse_label({"target": "orders.count", "as": "real", "from": "2026-11-27T10:00Z"}))
    clients.s3.put_object(Bucket=settings.bucket, Key="labels/bad.json", Body=b'{"target": "orders.count", "as": "maybe"}')
    clients.s3.put_object(Bucket=settings.bucket, Key="labels/torn.json", Body=b'{"target": ')
    clients.s3.put_object(Bucket=settings.bucket, Key="maintenance/bad.json", Body=b'{"series": "*", "cron": "0 4 * * *"}')
    labels, errors = read_labels(settings, clients.s3)
    assert [lb.kind for lb in labels] == ["real"] and len(errors) == 2
    assert any("labels/bad.json: 'as' is 'maybe'" in e for e in errors) and any("labels/torn.json: not JSON" in e for e in errors)
    windows, window_errors = read_windows(settings, clients.s3)
    assert windows == [] and window_errors == [f"s3://{settings.bucket}/maintenance/bad.json: a recurring window needs "
                                               "'duration_minutes' between 1 and 10080"]
