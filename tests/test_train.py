"""Training: forewarn_aggregate's output -> forewarn_train (dag.test on the embedded stack) ->
forecasts with bands and model metadata; pure pieces tested without Airflow."""

from __future__ import annotations

import hashlib
import io
import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from forewarn import producer
from forewarn.synth import Scenario, SeriesSpec, generate_events, plan_landing
from forewarn.train import batches, read_parquet_uri, series_matrix

from helpers import DictS3, fresh_settings, list_keys

DAY0 = datetime(2026, 11, 10, tzinfo=UTC)


def test_series_matrix_fills_counts_with_zero_and_leaves_statistics_missing():
    index = pd.date_range(DAY0, periods=4, freq="15min", tz="UTC")
    frame = pd.DataFrame({"series": ["a", "a"], "bucket_start": [index[0], index[2]], "event_count": [3, 5], "value_mean": [1.0, 2.0]})
    assert series_matrix(frame, "event_count", index)["a"].tolist() == [3, 0, 5, 0]
    assert np.isnan(series_matrix(frame, "value_mean", index)["a"].to_numpy()[[1, 3]]).all()


def test_batches_cover_every_series_once_in_order():
    names = [f"s{i:03d}" for i in range(123)]
    out = batches(names, 50)
    assert [len(b) for b in out] == [50, 50, 23] and sum(out, []) == names


def test_batches_grow_to_keep_the_fit_tasks_within_what_airflow_maps():
    from forewarn.train import batch_size_within

    names = [f"s{i:05d}" for i in range(60_000)]
    assert batch_size_within(names[:51_200], 50, 1, 1024) == 50  # 1,024 batches: within the limit
    assert batch_size_within(names, 50, 1, 1024) == 59  # 1,200 batches of 50; 1,017 of 59 (1,035 of 58)
    assert len(batches(names, 59)) == 1017 and len(batches(names, 58)) > 1024
    size = batch_size_within(names, 50, 16, 1024)  # batches lie within shards: each shard rounds up
    assert len(batches(names, size, 16)) <= 1024 < len(batches(names, size - 1, 16))
    with pytest.raises(ValueError, match="max_map_length"):
        batch_size_within(names, 50, 256, 128)  # 256 shards hold series: 256 batches at least


def load(dag_id):
    from airflow.dag_processing.dagbag import DagBag

    from conftest import ROOT

    return DagBag(dag_folder=str(ROOT / "dags" / f"{dag_id}.py")).dags[dag_id]


@pytest.mark.stack
@pytest.mark.airflow
def test_train_dag_reads_the_aggregates_and_writes_forecasts(clients, airflow_db, monkeypatch):
    settings = fresh_settings(clients, grain_seconds=900, batch_size=2)
    config = {"bucket": settings.bucket, "glue_database": settings.glue_database, "grain_seconds": 900, "batch_size": 2,
              "training_days": 6, "horizon_hours": 6}
    monkeypatch.setenv("AIRFLOW_VAR_FOREWARN_CONFIG", json.dumps(config))
    scenario = Scenario([SeriesSpec("orders.count", rate=3.0), SeriesSpec("temp", kind="gauge", period_s=300, value_mean=5, value_sd=0.2, weekly_amplitude=0.0),
                         SeriesSpec("late.starter", rate=1.0)], seed=9)
    end = DAY0 + timedelta(days=6)
    plan = plan_landing(scenario, DAY0.timestamp(), end.timestamp(), settings.lookback_hours)
    plan = plan[~((plan.series == "late.starter") & (plan.event_epoch < (end - timedelta(days=2)).timestamp()))]
    producer.write_landing(clients.s3, settings.bucket, settings.raw_prefix, plan)

    conf = {"since": DAY0.isoformat(), "until": end.isoformat(), "hours_per_task": 72}
    assert load("forewarn_aggregate").test(logical_date=end + timedelta(hours=1), run_conf=conf).state == "success"

    train = load("forewarn_train")
    run = train.test(logical_date=end + timedelta(minutes=30))
    assert run.state == "success"
    prefix = f"{settings.forecasts_prefix}run={end:%Y-%m-%dT%H}/"
    keys = list_keys(clients.s3, settings.bucket, prefix)
    assert f"{prefix}_manifest.json" in keys and f"{prefix}training.parquet" in keys
    manifest = json.loads(clients.s3.get_object(Bucket=settings.bucket, Key=f"{prefix}_manifest.json")["Body"].read())
    assert len(manifest["batches"]) == 2 and manifest["fits"] == 6  # 3 series x 2 metrics

    forecasts = pd.concat([read_parquet_uri(clients.s3, uri) for uri in manifest["batches"]])
    assert set(forecasts["series"]) == {"orders.count", "temp", "late.starter"}
    assert len(forecasts) == 3 * 2 * 24  # 6 h of 15-minute buckets
    assert forecasts["bucket_start"].min() == pd.Timestamp(end)
    assert (forecasts["lower_95"] <= forecasts["mean"]).all() and (forecasts["mean"] <= forecasts["upper_95"]).all()
    assert (forecasts["lower_99"] <= forecasts["lower_95"]).all()
    # the publish step regrouped them by shard and hour: the same rows, one object an hour
    assert manifest["version"] == 2 and len(manifest["hourly"]["0"]) == 6
    hourly = pd.concat([read_parquet_uri(clients.s3, settings.s3_uri(k)) for k in manifest["hourly"]["0"].values()])
    columns = ["series", "metric", "bucket_start", "mean", "lower_95", "upper_95"]
    pd.testing.assert_frame_equal(hourly[columns].sort_values(columns[:3]).reset_index(drop=True),
                                  forecasts[columns].sort_values(columns[:3]).reset_index(drop=True))
    models = {(m["series"], m["metric"]): m for uri in manifest["models"]
              for m in json.loads(clients.s3.get_object(Bucket=settings.bucket, Key=uri.split("/", 3)[3])["Body"].read())}
    assert models[("orders.count", "event_count")]["model"].startswith("ar")
    assert models[("orders.count", "event_count")]["validation_mase"] > 0
    late = models[("late.starter", "event_count")]
    assert late["model"] == "seasonal_naive" and "cold start" in late["warnings"][-1]
    # the 95% band holds what the same process does next (six days of history: no weekly pattern here)
    nxt = generate_events(scenario, end.timestamp(), (end + timedelta(hours=6)).timestamp())
    nxt = nxt[nxt.series == "temp"]
    actual = nxt.groupby((nxt.event_epoch // 900 * 900).astype("int64"))["value"].mean()
    band = forecasts[(forecasts.series == "temp") & (forecasts.metric == "value_mean")].set_index("step")
    inside = (actual.to_numpy() >= band["lower_95"].to_numpy()) & (actual.to_numpy() <= band["upper_95"].to_numpy())
    assert inside.mean() >= 0.8

    backtest = pd.concat([read_parquet_uri(clients.s3, uri) for uri in manifest["backtests"]])
    orders = backtest[(backtest.series == "orders.count") & (backtest.metric == "event_count")]
    assert len(orders) > 24 and (orders["bucket_start"] < pd.Timestamp(end)).all()
    assert (orders["lower_95"] <= orders["mean"]).all() and orders["actual"].notna().all()

    before = {k: hashlib.sha256(clients.s3.get_object(Bucket=settings.bucket, Key=k)["Body"].read()).digest() for k in keys}
    assert train.test(logical_date=end + timedelta(minutes=30)).state == "success"
    after = {k: hashlib.sha256(clients.s3.get_object(Bucket=settings.bucket, Key=k)["Body"].read()).digest() for k in keys}
    assert after == before


def test_many_parquet_objects_read_as_one_table_even_when_some_are_empty():
    """A batch with no backtest rows is written from an empty frame (its columns typed as nulls
    or floats): reading it beside full ones must not fail on the types (it did at 10,000 series)."""

    import pandas as pd
    import pyarrow as pa

    from forewarn.aggregate import parquet_bytes
    from forewarn.train import read_parquet_uris

    class FakeS3:
        objects = {
            "empty": parquet_bytes(pa.Table.from_pandas(pd.DataFrame({"series": pd.Series([], dtype=float), "v": pd.Series([], dtype=float)}))),
            "full": parquet_bytes(pa.Table.from_pandas(pd.DataFrame({"series": ["a", "b"], "v": [1.0, 2.0]}))),
        }

        def get_object(self, Bucket, Key):  # noqa: N803
            return {"Body": io.BytesIO(self.objects[Key])}

    table = read_parquet_uris(FakeS3(), ["s3://b/empty", "s3://b/full", "s3://b/empty", "s3://b/full"])
    assert table.column("series").to_pylist() == ["a", "b", "a", "b"]
    assert read_parquet_uris(FakeS3(), ["s3://b/empty"]).num_rows == 0


@pytest.mark.stack
def test_an_outage_in_the_history_is_not_learnt_once_its_episode_is_recorded(clients):
    """Yesterday's outage pulls today's forecast for the same hours down, so the same drop today
    would look normal; with the episode recorded (as the comparison records it), training keeps
    those buckets out and forecasts the usual level there, and says how many it kept out."""
    from forewarn.episodes import Episode, span_record
    from forewarn.layout import episode_key
    from forewarn.publish import token_of
    from forewarn.synth import Anomaly
    from forewarn.train import train_all

    from helpers import land_and_aggregate

    settings = fresh_settings(clients, grain_seconds=900, training_days=7, horizon_hours=24)
    until = DAY0 + timedelta(days=7)
    outage = until - timedelta(hours=14)  # 10:00 to 14:00 of the last day
    scenario = Scenario([SeriesSpec("orders.count", rate=8.0, weekly_amplitude=0.0)],
                        anomalies=[Anomaly("drop", "orders.count", outage.timestamp(), 4 * 3600, 0.1)], seed=5)
    land_and_aggregate(clients, settings, scenario, DAY0, until, 24 * 8)

    def forecast_at_outage_hours() -> tuple[float, float, dict]:
        manifest = train_all(settings, clients.s3, until)
        fc = pd.concat([read_parquet_uri(clients.s3, uri) for uri in manifest["batches"]])
        fc = fc[fc.metric == "event_count"].set_index("bucket_start")["mean"]
        same_hours = fc[(fc.index >= pd.Timestamp(outage + timedelta(days=1))) & (fc.index < pd.Timestamp(outage + timedelta(days=1, hours=4)))]
        return float(same_hours.mean()), float(fc.mean()), manifest

    learnt, _, plain = forecast_at_outage_hours()
    assert plain["masked_buckets"] == 0
    ep = Episode(id=f"orders.count|{outage:%Y-%m-%dT%H:%M}", started=outage.isoformat(),
                 last_anomalous=(outage + timedelta(hours=3, minutes=45)).isoformat(), metric="event_count",
                 deviations=[{"metric": "event_count"}])
    record = span_record("orders.count", ep, (outage + timedelta(hours=5)).isoformat(), "live")
    clients.s3.put_object(Bucket=settings.bucket, Key=episode_key(outage, token_of(ep.id)), Body=json.dumps(record).encode())
    kept_out, overall, masked = forecast_at_outage_hours()
    assert masked["masked_buckets"] == 16  # event_count (value_mean did not deviate), 16 buckets of 15 minutes
    expected = 8.0 * 15  # events a 15-minute bucket at the scenario's mean rate, before the daily cycle
    assert learnt < 0.8 * kept_out, (learnt, kept_out)
    assert kept_out > 0.6 * expected, (kept_out, expected, overall)
    models = [m for uri in masked["models"] for m in json.loads(clients.s3.get_object(Bucket=settings.bucket, Key=uri.split("/", 3)[3])["Body"].read())]
    assert {(m["metric"], m["masked_buckets"]) for m in models if m["masked_buckets"]} == {("event_count", 16)}

    # an operator says it was a load test: it is learnt again
    from forewarn.labels import parse_label, write_label

    write_label(settings, clients.s3, parse_label({"target": ep.id, "as": "not_anomaly", "created": "2026-11-17T00:00Z"}))
    relearnt, _, labelled = forecast_at_outage_hours()
    assert labelled["masked_buckets"] == 0 and relearnt == pytest.approx(learnt)
    # ... and later that the hour after it was an outage the detector missed (every metric kept out)
    write_label(settings, clients.s3, parse_label({"target": "orders.count", "as": "real", "from": (outage + timedelta(hours=4)).isoformat(),
                                                   "to": (outage + timedelta(hours=5)).isoformat(), "created": "2026-11-17T01:00Z"}))
    _, _, ranged = forecast_at_outage_hours()
    assert ranged["masked_buckets"] == 2 * 4  # event_count and value_mean, 4 buckets
    # a nightly maintenance window (01:00-01:30 in Berlin) is kept out of every matching series
    from forewarn.maintenance import parse_window, write_window

    write_window(settings, clients.s3, parse_window({"series": "orders.*", "cron": "0 1 * * *", "duration_minutes": 30,
                                                     "tz": "Europe/Berlin"}))
    write_window(settings, clients.s3, parse_window({"series": "other.*", "cron": "0 2 * * *", "duration_minutes": 30}))
    _, _, nightly = forecast_at_outage_hours()
    assert nightly["masked_buckets"] == 2 * 4 + 7 * 2 * 2  # and 7 nights x 2 buckets x 2 metrics
    # an episode whose record was never closed (its state lost) is kept out only to an hour after
    # the last anomalous bucket the record says, not to the end of the window
    began = until - timedelta(days=3) + timedelta(hours=6)
    lost = Episode(id=f"orders.count|{began:%Y-%m-%dT%H:%M}", started=began.isoformat(),
                   last_anomalous=(began + timedelta(minutes=45)).isoformat(), metric="event_count", deviations=[{"metric": "event_count"}])
    clients.s3.put_object(Bucket=settings.bucket, Key=episode_key(began, token_of(lost.id)),
                          Body=json.dumps(span_record("orders.count", lost, None, "live")).encode())
    _, _, open_one = forecast_at_outage_hours()
    assert open_one["masked_buckets"] == nightly["masked_buckets"] + 8  # 06:00 to 07:45: 45 minutes and the hour after


@pytest.mark.stack
def test_a_new_normal_label_makes_training_take_the_new_level_at_once(clients):
    from forewarn.labels import parse_label, write_label
    from forewarn.synth import Anomaly
    from forewarn.train import train_all

    from helpers import land_and_aggregate

    settings = fresh_settings(clients, grain_seconds=900, training_days=7, horizon_hours=24)
    until = DAY0 + timedelta(days=7)
    moved = until - timedelta(hours=8)
    scenario = Scenario([SeriesSpec("orders.count", rate=8.0, weekly_amplitude=0.0)],
                        anomalies=[Anomaly("level_shift", "orders.count", moved.timestamp(), 3 * 86400, 1.6)], seed=6)
    land_and_aggregate(clients, settings, scenario, DAY0, until, 24 * 8)

    def next_day_mean() -> tuple[float, dict]:
        manifest = train_all(settings, clients.s3, until)
        fc = pd.concat([read_parquet_uri(clients.s3, uri) for uri in manifest["batches"]])
        return float(fc[fc.metric == "event_count"]["mean"].mean()), manifest

    before, _ = next_day_mean()
    write_label(settings, clients.s3, parse_label({"target": "orders.count", "as": "new_normal", "from": moved.isoformat()}))
    after, manifest = next_day_mean()
    level = 1.6 * 8.0 * 15  # events a 15-minute bucket at the new mean rate
    assert abs(after - level) < 0.15 * level, (before, after, level)
    assert abs(before - level) > abs(after - level) + 0.1 * level, (before, after, level)
    models = [m for uri in manifest["models"] for m in json.loads(clients.s3.get_object(Bucket=settings.bucket, Key=uri.split("/", 3)[3])["Body"].read())]
    assert next(m for m in models if m["metric"] == "event_count")["rebased"] == pytest.approx(1.6, rel=0.15)


def test_an_ended_episode_is_kept_out_up_to_the_calm_buckets_that_ended_it():
    """The detector alarms at an outage's onset and then damps the same deviation (one episode,
    one alert), so the record's last anomalous bucket is often its first: training keeps out
    every bucket up to the calm ones that ended the episode, not just the alarmed one."""

    from forewarn.config import Settings
    from forewarn.episodes import Episode, span_record
    from forewarn.layout import episode_key
    from forewarn.train import episode_spans

    settings = Settings(bucket="b", grain_seconds=300, resolve_after=6)
    onset = DAY0 + timedelta(hours=10)
    ended = onset + timedelta(hours=2)  # the 6th calm bucket after a 90-minute outage
    ep = Episode(id=f"orders.count|{onset:%Y-%m-%dT%H:%M}", started=onset.isoformat(), last_anomalous=onset.isoformat(),
                 metric="event_count", deviations=[{"metric": "event_count"}])
    key = episode_key(onset, "t")
    body = json.dumps(span_record("orders.count", ep, ended.isoformat(), "live")).encode()

    class FakeS3:
        def get_paginator(self, _name):
            class Pages:
                def paginate(self, Bucket, Prefix):  # noqa: N803 - boto3's names
                    return [{"Contents": [{"Key": key}]}] if key.startswith(Prefix) else [{}]
            return Pages()

        def get_object(self, Bucket, Key):  # noqa: N803
            return {"Body": io.BytesIO(body)}

    [span] = episode_spans(settings, FakeS3(), DAY0, DAY0 + timedelta(days=1))
    assert span["first"] == onset.isoformat()
    assert span["last"] == (ended - timedelta(minutes=30)).isoformat()  # the last bucket before the 6 calm ones


def test_the_span_records_are_read_a_few_at_a_time_in_their_order():
    """A week of span records is many objects (an episode or ruled-out run each): training reads
    them several at a time, never more than its workers, and finds the same spans as one by one."""
    import threading
    import time

    from forewarn.config import Settings
    from forewarn.episodes import Episode, span_record
    from forewarn.layout import episode_key
    from forewarn.train import episode_spans

    settings = Settings(bucket="b", grain_seconds=300, resolve_after=6)
    objects = {}
    for i in range(40):
        onset = DAY0 - timedelta(days=3) + timedelta(hours=5 * i)
        ep = Episode(id=f"s{i % 3}|{onset:%Y-%m-%dT%H:%M}", started=onset.isoformat(), last_anomalous=onset.isoformat(),
                     metric="event_count", deviations=[{"metric": "event_count"}])
        objects[episode_key(onset, f"t{i:02d}")] = json.dumps(span_record(f"s{i % 3}", ep, None, "live")).encode()
    lock, flying, most = threading.Lock(), [0], [0]

    class FakeS3(DictS3):
        def get_object(self, Bucket, Key):  # noqa: N803
            with lock:
                flying[0] += 1
                most[0] = max(most[0], flying[0])
            time.sleep(0.01)  # a GET's round trip
            with lock:
                flying[0] -= 1
            return super().get_object(Bucket, Key)

    until = DAY0 + timedelta(days=6)
    spans = episode_spans(settings, FakeS3(objects), DAY0 - timedelta(days=3), until)
    assert 1 < most[0] <= 8, most
    most[0] = 0
    assert spans == episode_spans(settings, FakeS3(objects), DAY0 - timedelta(days=3), until, workers=1) and most[0] == 1
    assert len(spans) == 40


@pytest.mark.stack
def test_the_per_series_settings_choose_the_forecasting_model(clients):
    """A settings rule with ``model: ets`` makes training fit exponential smoothing for the series
    it matches; the others keep the default sparse autoregression."""
    from forewarn.train import fit_batch

    settings = fresh_settings(clients, grain_seconds=3600, training_days=14, horizon_hours=24)
    until = DAY0 + timedelta(days=14)
    index = pd.date_range(DAY0, until, freq="h", inclusive="left")
    rng = np.random.default_rng(2)
    daily = 50 + 20 * np.sin(2 * np.pi * np.arange(index.size) / 24)
    training = pd.concat([pd.DataFrame({"series": name, "bucket_start": index, "event_count": np.round(daily + rng.normal(0, 3, index.size)),
                                        "value_mean": daily + rng.normal(0, 1, index.size)}) for name in ("checkout.orders", "api.errors")])
    clients.s3.put_object(Bucket=settings.bucket, Key=settings.series_settings_key, Body=b"series:\n  - match: 'checkout.*'\n    model: ets\n")
    result = fit_batch(settings, clients.s3, until, training, 0, ["checkout.orders", "api.errors"],
                       masks={"spans": {}, "rebase": {}, "windows": []})
    models = json.loads(clients.s3.get_object(Bucket=settings.bucket, Key=result["models_uri"].split("/", 3)[3])["Body"].read())
    by = {(m["series"], m["metric"]): m["model"] for m in models}
    assert by[("checkout.orders", "event_count")] == by[("checkout.orders", "value_mean")] == "log-ets"
    assert by[("api.errors", "event_count")].startswith("ar") and by[("api.errors", "value_mean")].startswith("ar")


@pytest.mark.stack
def test_a_holiday_calendar_keeps_holidays_out_and_lets_one_ahead_behave_like_a_sunday(clients):
    """Busy weekdays and quiet Sundays, hourly, three weeks. The series whose settings give it the
    US calendar and a day of its own (2026-12-02) in New York time had Veterans Day and
    Thanksgiving as quiet as Sundays: both are kept out of its history, and on its own day (the
    next day forecast) the band holds the Sunday level as well as the weekday's. The other series
    had those days as ordinary weekdays and no calendar: its band is the model's own, and a
    Sunday-like day lies far outside it."""
    from zoneinfo import ZoneInfo

    from forewarn.train import fit_batch

    settings = fresh_settings(clients, grain_seconds=3600, training_days=22, horizon_hours=24)
    until = DAY0 + timedelta(days=22)  # 2026-12-02 00:00 UTC
    index = pd.date_range(DAY0, until, freq="h", inclusive="left")
    local = index.tz_convert(ZoneInfo("America/New_York"))
    holiday = pd.Index(local.date).isin([pd.Timestamp("2026-11-11").date(), pd.Timestamp("2026-11-26").date()])
    cycle = 1 + 0.2 * np.sin(2 * np.pi * (local.hour.to_numpy() - 6) / 24)
    rng = np.random.default_rng(4)

    def history(quiet):
        level = np.where(quiet, 30.0, 100.0) * cycle
        return {"event_count": np.round(level + rng.normal(0, 2, index.size)), "value_mean": level + rng.normal(0, 1, index.size)}

    training = pd.concat([pd.DataFrame({"series": "shop.orders", "bucket_start": index, **history((local.dayofweek == 6) | holiday)}),
                          pd.DataFrame({"series": "plain.orders", "bucket_start": index, **history(local.dayofweek == 6)})])
    clients.s3.put_object(Bucket=settings.bucket, Key=settings.series_settings_key,
                          Body=b"series:\n  - match: 'shop.*'\n    holidays: US\n    events: [2026-12-02]\n    tz: America/New_York\n")
    result = fit_batch(settings, clients.s3, until, training, 0, ["shop.orders", "plain.orders"],
                       masks={"spans": {}, "rebase": {}, "windows": []})
    models = {(m["series"], m["metric"]): m for m in
              json.loads(clients.s3.get_object(Bucket=settings.bucket, Key=result["models_uri"].split("/", 3)[3])["Body"].read())}
    shop, plain = models[("shop.orders", "event_count")], models[("plain.orders", "event_count")]
    assert (shop["holiday_buckets_kept_out"], shop["holiday_buckets_widened"]) == (48, 19)  # 19 of 24 forecast hours are the 2nd in New York
    assert (plain["holiday_buckets_kept_out"], plain["holiday_buckets_widened"]) == (0, 0)
    forecasts = pd.read_parquet(io.BytesIO(clients.s3.get_object(Bucket=settings.bucket, Key=result["uri"].split("/", 3)[3])["Body"].read()))
    at = forecasts["bucket_start"].dt.tz_convert("America/New_York")
    by = forecasts[(forecasts["metric"] == "event_count") & (at.dt.hour == 12)].set_index("series")
    sunday_noon, weekday_noon = 30 * (1 + 0.2 * np.sin(2 * np.pi * 6 / 24)), 100 * (1 + 0.2 * np.sin(2 * np.pi * 6 / 24))
    assert by.loc["shop.orders", "lower_95"] < sunday_noon and weekday_noon < by.loc["shop.orders", "upper_95"]
    assert by.loc["plain.orders", "lower_95"] > sunday_noon + 30


@pytest.mark.stack
def test_an_expected_label_that_recurs_keeps_the_batch_out_and_expects_the_next_one(clients):
    """A weekly batch (four times the level, Wednesdays 02:00-03:00 UTC) seen once, labelled
    ``expected`` and weekly: training keeps it out of the history and the band over next
    Wednesday's batch holds it; the same series unlabelled is forecast as an ordinary night."""
    from forewarn.labels import parse_label, write_label
    from forewarn.train import fit_batch, masks_by_series, training_masks

    settings = fresh_settings(clients, grain_seconds=900, training_days=14, horizon_hours=26)
    until = datetime(2026, 11, 25, tzinfo=UTC)  # a Wednesday
    index = pd.date_range(until - timedelta(days=14), until, freq="15min", inclusive="left")
    batch = (index >= "2026-11-18T02:00Z") & (index < "2026-11-18T03:00Z")
    rng = np.random.default_rng(9)
    level = 40 * (1 + 0.3 * np.sin(2 * np.pi * (index.hour.to_numpy() * 4 + index.minute.to_numpy() / 15) / 96))
    counts = np.round(np.where(batch, 4 * level, level) + rng.normal(0, 2, index.size))
    training = pd.concat([pd.DataFrame({"series": name, "bucket_start": index, "event_count": counts, "value_mean": 50.0})
                          for name in ("etl.nightly", "etl.plain")])
    write_label(settings, clients.s3, parse_label({"target": "etl.nightly", "as": "expected", "recurs": "weekly", "by": "bob",
                                                   "from": "2026-11-18T02:00:00Z", "to": "2026-11-18T03:00:00Z"}))
    doc = training_masks(settings, clients.s3, until - timedelta(days=14), until)
    assert [(r["series"], r["period_seconds"]) for r in doc["recurring"]] == [("etl.nightly", 7 * 86400)]
    result = fit_batch(settings, clients.s3, until, training, 0, ["etl.nightly", "etl.plain"], masks=masks_by_series(doc))
    models = {(m["series"], m["metric"]): m for m in
              json.loads(clients.s3.get_object(Bucket=settings.bucket, Key=result["models_uri"].split("/", 3)[3])["Body"].read())}
    assert models[("etl.nightly", "event_count")]["planned_buckets_widened"] == 4
    # kept out: the batch and the same hour a week before it (a recurrence either way; ordinary then, and harmless to leave out)
    assert models[("etl.nightly", "event_count")]["masked_buckets"] == 8 and models[("etl.plain", "event_count")]["masked_buckets"] == 0
    forecasts = pd.read_parquet(io.BytesIO(clients.s3.get_object(Bucket=settings.bucket, Key=result["uri"].split("/", 3)[3])["Body"].read()))
    f = forecasts[forecasts["metric"] == "event_count"].set_index(["series", "bucket_start"])
    at = pd.Timestamp("2026-11-25T02:30Z")
    spike = float(counts[index == pd.Timestamp("2026-11-18T02:30Z")][0])
    assert f.loc[("etl.nightly", at), "lower_95"] < spike < f.loc[("etl.nightly", at), "upper_95"]  # the next batch is expected
    assert f.loc[("etl.plain", at), "upper_95"] < spike * 0.6  # unlabelled: an ordinary night
    assert f.loc[("etl.nightly", at + pd.Timedelta(hours=2)), "upper_95"] < spike * 0.6  # and only the batch's hour is widened


@pytest.mark.stack
def test_seasons_follow_the_series_time_zone_across_a_daylight_saving_change(clients):
    """A morning peak at 08:00 Berlin time, hourly, three weeks of summer (06:00 UTC), trained at
    the midnight before clocks go back (25 October 2026, 01:00 UTC): that day the peak comes at
    07:00 UTC. With ``tz: Europe/Berlin`` the forecast peaks at 07:00 UTC, where it happens;
    without a time zone, at 06:00 UTC, an hour early, so the change itself would look like an
    anomaly twice (a low 06:00, a high 07:00)."""
    from zoneinfo import ZoneInfo

    from forewarn.train import fit_batch

    settings = fresh_settings(clients, grain_seconds=3600, training_days=21, horizon_hours=24)
    until = datetime(2026, 10, 25, tzinfo=UTC)
    index = pd.date_range(until - timedelta(days=21), until + timedelta(days=1), freq="h", inclusive="left")
    hour = index.tz_convert(ZoneInfo("Europe/Berlin")).hour.to_numpy()
    truth = 100 + 80 * np.exp(-((hour - 8) ** 2) / 2.0)
    rng = np.random.default_rng(12)
    past = index < until
    values = truth + rng.normal(0, 2, index.size)
    training = pd.concat([pd.DataFrame({"series": name, "bucket_start": index[past], "event_count": np.round(values[past]),
                                        "value_mean": values[past]}) for name in ("shop.berlin", "shop.utc")])
    clients.s3.put_object(Bucket=settings.bucket, Key=settings.series_settings_key,
                          Body=b"series:\n  - match: 'shop.berlin'\n    tz: Europe/Berlin\n")
    result = fit_batch(settings, clients.s3, until, training, 0, ["shop.berlin", "shop.utc"], masks={"spans": {}, "rebase": {}, "windows": []})
    forecasts = pd.read_parquet(io.BytesIO(clients.s3.get_object(Bucket=settings.bucket, Key=result["uri"].split("/", 3)[3])["Body"].read()))
    f = forecasts[forecasts["metric"] == "value_mean"].pivot(index="bucket_start", columns="series", values="mean")
    expected = pd.Series(truth[~past], index=index[~past])
    assert f["shop.berlin"].idxmax() == pd.Timestamp("2026-10-25T07:00Z") and f["shop.utc"].idxmax() == pd.Timestamp("2026-10-25T06:00Z")
    zoned, plain = (float((f[name] - expected).abs().mean()) for name in ("shop.berlin", "shop.utc"))
    assert zoned < 6 and plain > 2 * zoned, (zoned, plain)
    models = json.loads(clients.s3.get_object(Bucket=settings.bucket, Key=result["models_uri"].split("/", 3)[3])["Body"].read())
    assert any("seasons in Europe/Berlin local time" in w for m in models if m["series"] == "shop.berlin" for w in m["warnings"])
    backtest = pd.read_parquet(io.BytesIO(clients.s3.get_object(Bucket=settings.bucket, Key=result["backtest_uri"].split("/", 3)[3])["Body"].read()))
    mine = backtest[(backtest["series"] == "shop.berlin") & (backtest["metric"] == "value_mean")]
    np.testing.assert_allclose(mine["actual"], pd.Series(values, index=index).reindex(mine["bucket_start"]).to_numpy(), atol=1e-6)
    # the whole history's range rides with the backtests (the detector's warm-up knows it), not the backtests' own
    assert (mine["history_low"] == values[past].min()).all() and (mine["history_high"] == values[past].max()).all()
    assert (mine["history_values"] == past.sum()).all() and len(mine) < past.sum()


def test_a_recurrence_keeps_its_local_time_across_a_daylight_saving_change():
    from forewarn.train import recurrences

    batch = {"first": "2026-10-21T00:00:00+00:00", "last": "2026-10-21T00:59:59+00:00", "period_seconds": 7 * 86400}  # 02:00 in Berlin
    week_after = pd.date_range("2026-10-28T00:00Z", periods=4, freq="h")  # clocks went back on the 25th
    assert week_after[recurrences(batch, week_after, "Europe/Berlin")].tolist() == [pd.Timestamp("2026-10-28T01:00Z")]
    assert week_after[recurrences(batch, week_after)].tolist() == [pd.Timestamp("2026-10-28T00:00Z")]  # UTC: an hour early there


@pytest.mark.stack
def test_hours_never_aggregated_are_unknown_to_training_not_zero_events(clients):
    """The hour before midnight (its aggregation still running when training starts) and six
    hours of the day before never got an aggregate partition: training fills them from the season
    before instead of learning zero events, so the next day's forecast keeps its level, and the
    run says how many hours were missing."""
    import pyarrow as pa

    from forewarn.aggregate import AGGREGATE_SCHEMA, parquet_bytes
    from forewarn.layout import aggregate_key, manifest_key
    from forewarn.train import train_all

    settings = fresh_settings(clients, grain_seconds=3600, training_days=14, horizon_hours=24, metrics="event_count")
    until = DAY0 + timedelta(days=14)
    rng = np.random.default_rng(4)
    hole = {until - timedelta(hours=1)} | {until - timedelta(hours=18) + timedelta(hours=k) for k in range(6)}
    level = 100 + 50 * np.sin(2 * np.pi * np.arange(24) / 24)  # by hour of day
    for k in range(14 * 24):
        hour = DAY0 + timedelta(hours=k)
        if hour in hole:
            continue
        frame = pd.DataFrame({"series": ["shop.orders"], "bucket_start": [pd.Timestamp(hour)], "grain_seconds": [3600],
                              "event_count": [rng.poisson(level[hour.hour])], "value_sum": [0.0], "value_mean": [0.0],
                              "value_stddev": [0.0], "value_p95": [0.0]})
        table = pa.Table.from_pandas(frame, preserve_index=False).cast(AGGREGATE_SCHEMA)
        clients.s3.put_object(Bucket=settings.bucket, Key=aggregate_key(settings, hour), Body=parquet_bytes(table))
    train_all(settings, clients.s3, until)
    manifest = json.loads(clients.s3.get_object(Bucket=settings.bucket, Key=manifest_key(settings, until))["Body"].read())
    forecast = read_parquet_uri(clients.s3, manifest["batches"][0])
    mean = forecast.sort_values("bucket_start")["mean"].to_numpy()
    assert np.all(np.abs(mean - level) < 0.2 * level), np.round(mean / level, 2)  # zeros learnt: 0.14-0.45 of the level at first
    assert manifest["missing_partitions"] == 7
    [model] = json.loads(clients.s3.get_object(Bucket=settings.bucket, Key=manifest["models"][0].split("/", 3)[3])["Body"].read())
    assert model["unaggregated_buckets"] == 7
    # a window reaching before the first partition (a young deployment): those hours are not missing, only earlier
    train_all(settings.replace(training_days=16), clients.s3, until)
    manifest = json.loads(clients.s3.get_object(Bucket=settings.bucket, Key=manifest_key(settings, until))["Body"].read())
    assert manifest["missing_partitions"] == 7


@pytest.mark.stack
def test_aggregates_at_the_grain_before_a_change_are_combined_onto_the_new_one(clients):
    """Six days of 5-minute aggregates, then one of 10-minute ones (``grain_seconds`` changed to
    600): training on the 10-minute grid combines the older rows (two counts a bucket, the mean
    and deviation pooled) instead of keeping every other 5-minute bucket as a 10-minute count."""
    import pyarrow as pa

    from forewarn.aggregate import AGGREGATE_SCHEMA, parquet_bytes
    from forewarn.layout import aggregate_key, manifest_key
    from forewarn.train import train_all

    settings = fresh_settings(clients, grain_seconds=600, training_days=7, horizon_hours=24, metrics="event_count,value_mean")
    until = DAY0 + timedelta(days=7)
    rng = np.random.default_rng(6)

    def per_minute(times: pd.DatetimeIndex) -> np.ndarray:  # events a minute, by time of day
        return 10 + 5 * np.sin(2 * np.pi * (times.hour * 60 + times.minute) / 1440)

    for k in range(7 * 24):
        hour = DAY0 + timedelta(hours=k)
        grain = 300 if k < 6 * 24 else 600
        times = pd.date_range(hour, periods=3600 // grain, freq=f"{grain}s")
        counts = rng.poisson(per_minute(times) * grain / 60)
        frame = pd.DataFrame({"series": "shop.orders", "bucket_start": times, "grain_seconds": grain, "event_count": counts,
                              "value_sum": counts * 20.0, "value_mean": 20.0 + rng.normal(0, 0.1, times.size),
                              "value_stddev": 1.0, "value_p95": 22.0})
        table = pa.Table.from_pandas(frame, preserve_index=False).cast(AGGREGATE_SCHEMA)
        clients.s3.put_object(Bucket=settings.bucket, Key=aggregate_key(settings, hour), Body=parquet_bytes(table))
    train_all(settings, clients.s3, until)
    manifest = json.loads(clients.s3.get_object(Bucket=settings.bucket, Key=manifest_key(settings, until))["Body"].read())
    forecast = read_parquet_uri(clients.s3, manifest["batches"][0])
    counts = forecast[forecast["metric"] == "event_count"].sort_values("bucket_start")
    truth = per_minute(pd.DatetimeIndex(counts["bucket_start"])) * 10
    assert np.all(np.abs(counts["mean"].to_numpy() - truth) < 0.15 * truth), np.round(counts["mean"].to_numpy() / truth, 2)[::6]

    # the pooling itself: two 5-minute buckets of 2 and 3 values make the 10-minute one of all 5
    from forewarn.train import regrid

    parts = pd.DataFrame({"series": "s", "bucket_start": pd.to_datetime(["2026-11-10T00:00Z", "2026-11-10T00:05Z"]), "grain_seconds": 300,
                          "event_count": [2, 3], "value_sum": [3.0, 15.0], "value_mean": [1.5, 5.0],
                          "value_stddev": [np.std([1, 2], ddof=1), np.std([4, 5, 6], ddof=1)], "value_p95": [2.0, 6.0]})
    combined, unknown = regrid(parts, 600)
    (row,) = combined.to_dict("records")
    assert (row["event_count"], row["value_sum"], row["value_mean"], row["value_p95"]) == (5, 18.0, 3.6, 6.0)
    assert row["value_stddev"] == pytest.approx(np.std([1, 2, 4, 5, 6], ddof=1)) and unknown.size == 0
    coarser, unknown = regrid(parts.assign(grain_seconds=900), 600)
    assert coarser.empty and list(unknown) == [pd.Timestamp("2026-11-10T00:00Z")]


@pytest.mark.stack
def test_a_change_of_grain_is_reported_once_a_run_not_once_a_batch(clients, caplog):
    """Three series trained one a batch after ``grain_seconds`` changed from 300 to 600, with an
    hour written at 1,800 s between: one warning for the run, naming the series, the rows and
    hours combined and the hours left unknown, where each batch used to repeat its own."""
    import pyarrow as pa

    from forewarn.aggregate import AGGREGATE_SCHEMA, parquet_bytes
    from forewarn.layout import aggregate_key
    from forewarn.train import train_all

    settings = fresh_settings(clients, grain_seconds=600, training_days=2, horizon_hours=6, metrics="event_count", batch_size=1)
    names = ["a.orders", "b.orders", "c.orders"]
    for k in range(48):
        hour = DAY0 + timedelta(hours=k)
        grain = 300 if k < 24 else 1800 if k == 24 else 600
        times = pd.date_range(hour, periods=3600 // grain, freq=f"{grain}s")
        frame = pd.DataFrame({"series": np.repeat(names, times.size), "bucket_start": np.tile(times, len(names)),
                              "grain_seconds": grain, "event_count": grain // 60, "value_sum": grain / 60.0, "value_mean": 1.0,
                              "value_stddev": 0.0, "value_p95": 1.0})
        table = pa.Table.from_pandas(frame, preserve_index=False).cast(AGGREGATE_SCHEMA)
        clients.s3.put_object(Bucket=settings.bucket, Key=aggregate_key(settings, hour), Body=parquet_bytes(table))
    with caplog.at_level("WARNING", logger="forewarn.train"):
        manifest = train_all(settings, clients.s3, DAY0 + timedelta(days=2))
    assert len(manifest["batches"]) == 3
    warned = [r.getMessage() for r in caplog.records if "another grain" in r.getMessage()]
    assert len(warned) == 1, warned
    assert "3 series" in warned[0] and "864 rows in 24 hour(s) combined" in warned[0] and "1 hour(s) unknown" in warned[0], warned


@pytest.mark.stack
def test_the_hours_training_waits_for_are_those_of_its_day_not_aggregated_yet(clients):
    """The day's last hour is aggregated after midnight: until its window's summary is written,
    training waits for it. A gap older than the day is not waited for (nor reported here), and
    neither is anything before the first hour ever aggregated (a young deployment); a range run
    that reached past the moment it ran has not aggregated the hours after it."""
    from forewarn.aggregate import aggregated_hours, make_engine, range_windows, run_window, scheduled_window
    from forewarn.train import hours_not_aggregated

    settings = fresh_settings(clients, training_days=28)
    until = DAY0 + timedelta(days=3)
    last = until - timedelta(hours=1)
    engine = make_engine(settings, clients)
    assert hours_not_aggregated(settings, clients.s3, until) == []  # nothing aggregated at all: nothing to wait for
    # aggregated from 06:00 of the first day to 23:00 of the third, with a gap of three hours the second day
    for start, end in [(DAY0 + timedelta(hours=6), DAY0 + timedelta(hours=30)), (DAY0 + timedelta(hours=33), last)]:
        for window in range_windows(start, end, settings.lookback_hours, 24):
            run_window(settings, engine, clients.s3, window)
    assert hours_not_aggregated(settings, clients.s3, until) == [last.isoformat()]
    run_window(settings, engine, clients.s3, scheduled_window(last, until, settings.lookback_hours))  # the run after midnight
    assert hours_not_aggregated(settings, clients.s3, until) == []
    assert hours_not_aggregated(settings, clients.s3, DAY0 + timedelta(days=2)) == [
        (DAY0 + timedelta(hours=h)).isoformat() for h in (30, 31, 32)]
    # the deployment's first day: the hours before the first one aggregated are not awaited
    assert hours_not_aggregated(settings, clients.s3, DAY0 + timedelta(days=1)) == []

    def hour_now() -> datetime:
        return datetime.now(tz=UTC).replace(minute=0, second=0, microsecond=0)

    for _ in range(2):  # the summary's time is the store's clock: if the hour turned during the run, run it again
        now = hour_now()
        ahead = range_windows(now - timedelta(hours=2), now + timedelta(hours=2), settings.lookback_hours, 24)
        run_window(settings, engine, clients.s3, ahead[0])
        if hour_now() == now:
            break
    assert aggregated_hours(settings, clients.s3, now - timedelta(hours=2), now + timedelta(hours=2)) == {
        now - timedelta(hours=2), now - timedelta(hours=1)}


@pytest.mark.stack
def test_hours_not_aggregated_are_unknown_to_training_even_where_a_partition_is_there(clients):
    """A window that wrote its hours' partitions but not its summary (it failed after them, or
    a range run wrote them before the hours had ended) has not aggregated them: training keeps
    them out as unknown, not learnt as the few events they hold."""
    import pyarrow as pa

    from forewarn.aggregate import AGGREGATE_SCHEMA, parquet_bytes
    from forewarn.layout import aggregate_key, aggregate_summary_key, masked_key
    from forewarn.train import train_all

    settings = fresh_settings(clients, grain_seconds=3600, training_days=7, horizon_hours=24, metrics="event_count")
    until = DAY0 + timedelta(days=7)
    level = 100 + 50 * np.sin(2 * np.pi * np.arange(24) / 24)
    rng = np.random.default_rng(1)
    partial = [until - timedelta(hours=k) for k in (3, 2, 1)]
    for h in (DAY0 + timedelta(hours=k) for k in range(7 * 24)):
        count = 2 if h in partial else int(rng.poisson(level[h.hour]))  # a partial hour holds a few events
        frame = pd.DataFrame({"series": ["shop.orders"], "bucket_start": [pd.Timestamp(h)], "grain_seconds": [3600],
                              "event_count": [count], "value_sum": [float(count)], "value_mean": [1.0], "value_stddev": [0.0],
                              "value_p95": [1.0]})
        clients.s3.put_object(Bucket=settings.bucket, Key=aggregate_key(settings, h),
                              Body=parquet_bytes(pa.Table.from_pandas(frame, preserve_index=False).cast(AGGREGATE_SCHEMA)))
    clients.s3.put_object(Bucket=settings.bucket, Body=b"{}",  # the summaries say: aggregated up to 21:00 only
                          Key=aggregate_summary_key(settings, f"{DAY0:%Y%m%dT%H}-{partial[0]:%Y%m%dT%H}"))
    manifest = train_all(settings, clients.s3, until)
    masks = json.loads(clients.s3.get_object(Bucket=settings.bucket, Key=masked_key(settings, until))["Body"].read())
    assert masks["missing_hours"] == [h.isoformat() for h in partial] and manifest["not_aggregated"] == masks["missing_hours"]
    forecast = read_parquet_uri(clients.s3, manifest["batches"][0])
    tomorrow = forecast[forecast["bucket_start"] >= pd.Timestamp(until + timedelta(hours=21))].sort_values("bucket_start")
    assert (tomorrow["mean"].to_numpy()[:3] > 0.5 * level[21:24]).all(), tomorrow["mean"].to_numpy()[:3]


@pytest.mark.stack
@pytest.mark.airflow
def test_training_waits_for_the_days_last_hour_and_when_its_wait_ends_names_it(clients, airflow_db, monkeypatch, capfd, caplog):
    """forewarn_train starts before the aggregation of 23:00-24:00 has run. With no time to wait
    (``FOREWARN_TRAIN_WAIT_MINUTES=0``) the sensor is skipped, training goes on without the hour
    and the log and the manifest name it; with the default wait, it trains once the hour's
    aggregation has written its summary (here three seconds later), on every hour."""
    import threading

    from forewarn.aggregate import make_engine, range_windows, run_window, scheduled_window
    from forewarn.layout import manifest_key

    settings = fresh_settings(clients, grain_seconds=3600, training_days=2, horizon_hours=6, metrics="event_count")
    config = {"bucket": settings.bucket, "glue_database": settings.glue_database, "grain_seconds": 3600,
              "training_days": 2, "horizon_hours": 6, "metrics": "event_count"}
    monkeypatch.setenv("AIRFLOW_VAR_FOREWARN_CONFIG", json.dumps(config))
    until = DAY0 + timedelta(days=2)
    last = until - timedelta(hours=1)
    plan = plan_landing(Scenario([SeriesSpec("orders.count", rate=0.5)], seed=3), DAY0.timestamp(), until.timestamp(),
                        settings.lookback_hours)
    producer.write_landing(clients.s3, settings.bucket, settings.raw_prefix, plan)
    engine = make_engine(settings, clients)
    for window in range_windows(DAY0, last, settings.lookback_hours, 24):
        run_window(settings, engine, clients.s3, window)

    def manifest() -> dict:
        return json.loads(clients.s3.get_object(Bucket=settings.bucket, Key=manifest_key(settings, until))["Body"].read())

    monkeypatch.setenv("FOREWARN_TRAIN_WAIT_MINUTES", "0")
    capfd.readouterr()
    run = load("forewarn_train").test(logical_date=until + timedelta(minutes=30))
    # the tasks' logs: dag.test writes them out, or hands them to logging when a test before set it up
    logged = capfd.readouterr().out + "\n".join(r.getMessage() for r in caplog.records)
    assert run.state == "success"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["wait_for_aggregation"] == "skipped" and states["gather"] == states["publish"] == "success"
    assert manifest()["not_aggregated"] == [last.isoformat()] and manifest()["missing_partitions"] == 1
    assert f"waiting for the aggregation of 1 hour(s): {last.isoformat()}" in logged
    assert f"training without the aggregation of 1 hour(s) of the day before {until.isoformat()}" in logged

    # the default wait: the hour's aggregation ends three seconds after the sensor first looked
    from forewarn import tasks

    pokes, looked = [], tasks.train_pending
    late = threading.Timer(3, run_window, (settings, engine, clients.s3, scheduled_window(last, until, settings.lookback_hours)))

    def poke(*args):
        pokes.append(looked(*args))
        if len(pokes) == 1:
            late.start()
        return pokes[-1]

    monkeypatch.setattr(tasks, "train_pending", poke)
    monkeypatch.delenv("FOREWARN_TRAIN_WAIT_MINUTES")
    train = load("forewarn_train")
    train.get_task("wait_for_aggregation").poke_interval = 1
    try:
        run = train.test(logical_date=until + timedelta(minutes=30))
    finally:
        if pokes:
            late.join()
    assert run.state == "success"
    assert {ti.task_id: ti.state for ti in run.get_task_instances()}["wait_for_aggregation"] == "success"
    assert pokes[0] == [last.isoformat()] and pokes[-1] == [] and len(pokes) >= 2
    assert manifest()["not_aggregated"] == [] and manifest()["missing_partitions"] == 0


@pytest.mark.stack
@pytest.mark.airflow
def test_more_batches_than_airflow_maps_train_in_larger_ones(clients, airflow_db, monkeypatch):
    """Airflow fails the task whose list would map more than ``[core] max_map_length`` fit tasks
    (1024 by default: 51,200 series at the default batch size). Here the limit is 2 and three
    series come in batches of one: training fits them in two batches of two and one."""
    import pyarrow as pa

    from forewarn.aggregate import AGGREGATE_SCHEMA, parquet_bytes
    from forewarn.layout import aggregate_key, manifest_key

    settings = fresh_settings(clients, grain_seconds=3600, training_days=2, horizon_hours=6, metrics="event_count", batch_size=1)
    config = {"bucket": settings.bucket, "glue_database": settings.glue_database, "grain_seconds": 3600,
              "training_days": 2, "horizon_hours": 6, "metrics": "event_count", "batch_size": 1}
    monkeypatch.setenv("AIRFLOW_VAR_FOREWARN_CONFIG", json.dumps(config))
    names = ["a.orders", "b.orders", "c.orders"]
    for k in range(48):
        hour = DAY0 + timedelta(hours=k)
        frame = pd.DataFrame({"series": names, "bucket_start": [pd.Timestamp(hour)] * 3, "grain_seconds": 3600,
                              "event_count": [10 + k % 24] * 3, "value_sum": 0.0, "value_mean": 0.0, "value_stddev": 0.0,
                              "value_p95": 0.0})
        table = pa.Table.from_pandas(frame, preserve_index=False).cast(AGGREGATE_SCHEMA)
        clients.s3.put_object(Bucket=settings.bucket, Key=aggregate_key(settings, hour), Body=parquet_bytes(table))
    until = DAY0 + timedelta(days=2)

    monkeypatch.setenv("AIRFLOW__CORE__MAX_MAP_LENGTH", "2")
    run = load("forewarn_train").test(logical_date=until + timedelta(minutes=30))
    assert run.state == "success"
    assert len([ti for ti in run.get_task_instances() if ti.task_id == "fit"]) == 2
    manifest = json.loads(clients.s3.get_object(Bucket=settings.bucket, Key=manifest_key(settings, until))["Body"].read())
    assert len(manifest["batches"]) == 2 and manifest["fits"] == 3


def test_the_backtests_carry_the_range_of_the_history_without_its_kept_out_buckets():
    """The range (and size) of what a series has shown rides with its backtests for the
    detector's warm-up; the buckets of a past episode, kept out of training, are not part of it:
    an outage of zeros learnt as a value the series shows would make the next one unremarkable."""
    import io

    from forewarn.config import Settings
    from forewarn.train import fit_batch

    class NoSuchKey(Exception):
        pass

    class FakeS3:
        exceptions = type("exceptions", (), {"NoSuchKey": NoSuchKey})

        def __init__(self):
            self.objects: dict[str, bytes] = {}

        def put_object(self, Bucket, Key, Body):  # noqa: N803 - boto3's names
            self.objects[Key] = Body

        def get_object(self, Bucket, Key):  # noqa: N803
            if Key not in self.objects:
                raise NoSuchKey(Key)
            return {"Body": io.BytesIO(self.objects[Key])}

    settings = Settings.load({"engine": "duckdb", "bucket": "b", "grain_seconds": 3600, "training_days": 14, "horizon_hours": 24,
                              "metrics": "event_count,value_mean"})
    until = datetime(2026, 10, 25, tzinfo=UTC)
    index = pd.date_range(until - timedelta(days=14), until, freq="h", inclusive="left")
    y = 100 + 20 * np.sin(2 * np.pi * index.hour.to_numpy() / 24) + np.random.default_rng(1).normal(0, 2, index.size)
    with_outage = y.copy()
    with_outage[50:56] = 0.0
    training = pd.concat([pd.DataFrame({"series": name, "bucket_start": index, "event_count": np.round(v), "value_mean": v})
                          for name, v in (("outage", with_outage), ("plain", y))])
    span = {"first": index[50].isoformat(), "last": index[55].isoformat(), "metrics": ["*"]}
    s3 = FakeS3()
    result = fit_batch(settings, s3, until, training, 0, ["outage", "plain"], masks={"spans": {"outage": [span]}, "rebase": {}, "windows": []})
    backtest = pd.read_parquet(io.BytesIO(s3.objects[result["backtest_uri"].split("/", 3)[3]]))
    got = backtest.groupby(["series", "metric"])[["history_low", "history_high", "history_values"]].agg(["min", "max"])
    kept = np.delete(y, range(50, 56))
    assert got.loc[("outage", "value_mean")].tolist() == pytest.approx([kept.min()] * 2 + [kept.max()] * 2 + [330] * 2)
    assert got.loc[("plain", "value_mean")].tolist() == pytest.approx([y.min()] * 2 + [y.max()] * 2 + [336] * 2)
    assert got.loc[("outage", "event_count"), ("history_low", "min")] == np.round(kept).min() > 0


def blas_threads() -> set[int]:
    """The thread counts of the BLAS libraries threadpoolctl sees in this process."""
    from threadpoolctl import threadpool_info

    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


def test_a_fit_task_holds_blas_to_one_thread_and_gives_the_process_its_threads_back(monkeypatch):
    """Fit tasks run side by side on a worker (mapped tasks, several worker slots): each holds
    BLAS to one thread while it fits, as two processes each with a thread per core were four to
    seven times slower (benchmarks/forecast_throughput.py --side-by-side 2)."""
    from threadpoolctl import threadpool_limits

    import forewarn.train as train
    from forewarn.config import Settings

    seen: list[set[int]] = []
    fit = train.forecast

    def watching(*args, **kwargs):
        seen.append(blas_threads())
        return fit(*args, **kwargs)

    monkeypatch.setattr(train, "forecast", watching)

    class Store(DictS3):
        exceptions = type("exceptions", (), {"NoSuchKey": KeyError})

        def put_object(self, Bucket, Key, Body):  # noqa: N803 - boto3's names
            self.objects[Key] = Body

    settings = Settings.load({"engine": "duckdb", "bucket": "b", "grain_seconds": 3600, "training_days": 7, "horizon_hours": 24,
                              "metrics": "event_count"})
    until = datetime(2026, 10, 25, tzinfo=UTC)
    index = pd.date_range(until - timedelta(days=7), until, freq="h", inclusive="left")
    training = pd.DataFrame({"series": "s", "bucket_start": index, "event_count": 100 + 10 * np.sin(np.arange(index.size) / 4),
                             "value_mean": 1.0})
    if not blas_threads():
        pytest.skip("no BLAS threadpoolctl can see (numpy linked to one it does not know)")
    with threadpool_limits(2, user_api="blas"):
        train.fit_batch(settings, Store({}), until, training, 0, ["s"], masks={"spans": {}, "rebase": {}, "windows": []})
        assert blas_threads() == {2}
    assert seen and all(threads == {1} for threads in seen), seen


def test_a_comparison_task_holds_blas_to_one_thread_too(monkeypatch):
    from threadpoolctl import threadpool_limits

    import forewarn.compare as compare
    from forewarn.config import Settings

    seen: list[set[int]] = []

    class Seen(Exception):
        pass

    def watching(settings):
        seen.append(blas_threads())
        raise Seen

    if not blas_threads():
        pytest.skip("no BLAS threadpoolctl can see")
    monkeypatch.setattr(compare, "detector_config", watching)
    settings = Settings.load({"engine": "duckdb", "bucket": "b"})
    start = datetime(2026, 10, 25, tzinfo=UTC)
    with threadpool_limits(2, user_api="blas"), pytest.raises(Seen):
        compare.compare_interval(settings, None, None, None, [], start, start + timedelta(minutes=5), start)
    assert seen == [{1}]


def test_calls_that_overlap_in_threads_share_the_one_thread_and_give_the_process_its_threads_back():
    """The limit is process-wide: two calls overlapping in threads hold it together, and the last
    one out restores the thread count the process had (a limiter per call restored the first
    one's view of it, one thread, for good)."""
    import threading

    from threadpoolctl import threadpool_limits

    from forewarn.blas import one_blas_thread

    if not blas_threads():
        pytest.skip("no BLAS threadpoolctl can see")
    first_in, first_may_leave, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: list[set[int]] = []

    @one_blas_thread
    def first():
        seen.append(blas_threads())
        first_in.set()
        first_may_leave.wait(10)

    @one_blas_thread
    def second():
        first_may_leave.set()
        assert first_out.wait(10)  # the first has left while the second is still in
        seen.append(blas_threads())

    def run_first():
        first()
        first_out.set()

    with threadpool_limits(2, user_api="blas"):
        a = threading.Thread(target=run_first)
        a.start()
        assert first_in.wait(10)
        b = threading.Thread(target=second)
        b.start()
        a.join(10)
        b.join(10)
        assert seen == [{1}, {1}] and blas_threads() == {2}, seen
