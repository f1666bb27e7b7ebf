"""Aggregation windows and outputs on the embedded stack: replace-not-append, byte-identical
reruns, late events picked up, bad lines set aside with their reason and counted."""

from __future__ import annotations

import hashlib
import io
import json
from datetime import UTC, datetime, timedelta

import pandas as pd
import pyarrow.parquet as pq
import pytest

from forewarn import producer
from forewarn.aggregate import (
    HOUR,
    aggregate_key,
    batch_windows,
    make_engine,
    range_windows,
    run_window,
    scheduled_window,
)
from forewarn.layout import shard_of
from forewarn.synth import Quality, Scenario, SeriesSpec, expected_totals, plan_landing

from helpers import fresh_settings, list_keys

T0 = datetime(2026, 11, 20, tzinfo=UTC)


def test_scheduled_window_rewrites_the_lookback_and_reads_every_landing_hour_it_can_come_from():
    w = scheduled_window(T0 + 5 * HOUR, T0 + 6 * HOUR, lookback_hours=2)
    assert (w.out_start, w.out_end) == (T0 + 3 * HOUR, T0 + 6 * HOUR)
    assert (w.arrival_start, w.arrival_end) == (T0 + 2 * HOUR, T0 + 8 * HOUR)  # every landing hour hour 5 can come from


def test_range_windows_cover_the_range_in_chunks_and_read_what_the_last_scheduled_run_reads():
    windows = range_windows(T0 + timedelta(minutes=30), T0 + 50 * HOUR, lookback_hours=2, hours_per_task=24)
    assert [(w.out_start, w.out_end) for w in windows] == [(T0, T0 + 24 * HOUR), (T0 + 24 * HOUR, T0 + 48 * HOUR), (T0 + 48 * HOUR, T0 + 50 * HOUR)]
    last_scheduled = scheduled_window(T0 + 26 * HOUR, T0 + 27 * HOUR, 2)  # the last run that rewrites hour 24..
    assert windows[1].arrival_start == T0 + 23 * HOUR
    assert windows[0].arrival_end == last_scheduled.arrival_start + 3 * HOUR  # hour 23 + L + 1
    with pytest.raises(ValueError, match="after since"):
        range_windows(T0, T0, 2, 24)


def test_a_range_of_more_windows_than_airflow_maps_is_batched_in_order_under_the_limit():
    windows = range_windows(T0, T0 + 50 * 24 * HOUR, lookback_hours=2, hours_per_task=1)  # 1,200 windows
    assert [len(b) for b in batch_windows(windows[:5], 1024)] == [1] * 5  # under the limit: one a task
    batched = batch_windows(windows, 1024)
    assert len(batched) == 600 and {len(b) for b in batched} == {2}
    assert sum(batched, []) == windows
    assert [len(b) for b in batch_windows(windows[:5], 2)] == [3, 2]
    with pytest.raises(ValueError):
        batch_windows(windows, 0)


def small_scenario(**quality) -> Scenario:
    return Scenario(
        series=[SeriesSpec("orders.count", rate=4.0), SeriesSpec("temp", kind="gauge", period_s=60, value_mean=5, value_sd=0.2)],
        quality=Quality(**quality),
        seed=11,
    )


def digests(s3, bucket, keys):
    return {k: hashlib.sha256(s3.get_object(Bucket=bucket, Key=k)["Body"].read()).hexdigest() for k in keys}


def read_hours(s3, settings, start, end) -> pd.DataFrame:
    frames, hour = [], start
    while hour < end:
        body = s3.get_object(Bucket=settings.bucket, Key=aggregate_key(settings, hour))["Body"].read()
        frames.append(pq.read_table(io.BytesIO(body)).to_pandas())
        hour += HOUR
    return pd.concat(frames, ignore_index=True)


@pytest.mark.stack
def test_range_run_counts_every_event_once_and_sets_bad_lines_aside(clients):
    settings = fresh_settings(clients)
    start, end = T0.timestamp(), (T0 + 6 * HOUR).timestamp()
    plan = plan_landing(
        small_scenario(duplicate_rate=0.05, late_rate=0.1, late_max_s=5000, very_late_rate=0.01, malformed_rate=0.02),
        start, end, settings.lookback_hours,
    )
    producer.write_landing(clients.s3, settings.bucket, settings.raw_prefix, plan)
    engine = make_engine(settings, clients)
    summaries = [run_window(settings, engine, clients.s3, w) for w in range_windows(T0, T0 + 6 * HOUR, 2, 4)]

    aggregates = read_hours(clients.s3, settings, T0, T0 + 6 * HOUR)
    expected = expected_totals(plan, start, end).set_index("series")
    got = aggregates.groupby("series")["event_count"].sum()
    assert got.to_dict() == expected["events"].to_dict()
    assert sum(s["duplicates"] for s in summaries) == expected["duplicates"].sum() > 0
    assert aggregates["grain_seconds"].eq(300).all()
    assert (aggregates["bucket_start"].dt.minute % 5 == 0).all()

    rejected = {}
    for key in list_keys(clients.s3, settings.bucket, settings.errors_prefix + "rejected/"):
        for line in clients.s3.get_object(Bucket=settings.bucket, Key=key)["Body"].read().decode().splitlines():
            record = json.loads(line)
            assert set(record) == {"reason", "source", "line"}
            rejected[record["reason"]] = rejected.get(record["reason"], 0) + 1
    assert rejected == plan["expected_reason"].dropna().value_counts().to_dict()
    assert rejected.get("too_late", 0) > 0


@pytest.mark.stack
def test_rerun_is_byte_identical_and_replaces_rather_than_appends(clients):
    settings = fresh_settings(clients)
    plan = plan_landing(small_scenario(duplicate_rate=0.02), T0.timestamp(), (T0 + 3 * HOUR).timestamp(), 2)
    producer.write_landing(clients.s3, settings.bucket, settings.raw_prefix, plan)
    engine = make_engine(settings, clients)
    window = scheduled_window(T0 + 2 * HOUR, T0 + 3 * HOUR, 2)
    first = run_window(settings, engine, clients.s3, window)
    before = digests(clients.s3, settings.bucket, first["objects"])
    second = run_window(settings, make_engine(settings, clients), clients.s3, window)
    assert second["objects"] == first["objects"]
    assert digests(clients.s3, settings.bucket, second["objects"]) == before
    assert second == first
    # hours outside the data hold empty partitions, so stale rows can never survive a rerun
    assert len(first["objects"]) == 3 and first["rows"] > 0


@pytest.mark.stack
def test_late_events_are_picked_up_by_the_next_run(clients):
    settings = fresh_settings(clients)
    event_time = T0 + timedelta(minutes=50)
    line = f'{{"event_id":"late-1","series":"s","event_time":"{event_time:%Y-%m-%dT%H:%M:%S}Z","value":2.0}}\n'
    engine = make_engine(settings, clients)
    window = scheduled_window(T0, T0 + HOUR, 2)
    run_window(settings, engine, clients.s3, window)
    assert read_hours(clients.s3, settings, T0, T0 + HOUR).empty
    # the event lands in the next hour's prefix, 40 minutes late
    clients.s3.put_object(Bucket=settings.bucket, Key=f"{settings.raw_prefix}{T0 + HOUR:%Y/%m/%d/%H}/late-object", Body=line.encode())
    run_window(settings, make_engine(settings, clients), clients.s3, scheduled_window(T0 + HOUR, T0 + 2 * HOUR, 2))
    rows = read_hours(clients.s3, settings, T0, T0 + HOUR)
    assert rows["event_count"].tolist() == [1]
    assert rows["bucket_start"].iloc[0] == pd.Timestamp(T0 + timedelta(minutes=50))


@pytest.mark.stack
def test_an_hour_with_no_rejects_loses_its_stale_reject_file(clients):
    settings = fresh_settings(clients)
    hour = T0 + HOUR
    key = f"{settings.raw_prefix}{hour:%Y/%m/%d/%H}/obj"
    clients.s3.put_object(Bucket=settings.bucket, Key=key, Body=b"garbage\n")
    window = scheduled_window(hour, hour + HOUR, 2)
    summary = run_window(settings, make_engine(settings, clients), clients.s3, window)
    assert summary["rejected_by_reason"] == {"invalid_json": 1}
    clients.s3.put_object(Bucket=settings.bucket, Key=key, Body=b"")  # the producer's data was fixed
    summary = run_window(settings, make_engine(settings, clients), clients.s3, window)
    assert summary["rejected"] == 0
    assert list_keys(clients.s3, settings.bucket, settings.errors_prefix) == []


@pytest.mark.stack
def test_missing_glue_table_says_what_to_do(clients):
    settings = fresh_settings(clients).replace(raw_table="nope")
    with pytest.raises(LookupError, match="forewarn stack up"):
        make_engine(settings, clients)


@pytest.mark.stack
def test_kept_parsed_lines_give_what_parsing_the_landing_gives_and_a_rewritten_object_is_parsed_again(clients, monkeypatch):
    from forewarn import query
    from forewarn.aggregate import classify_within
    from forewarn.query import DuckDBEngine

    monkeypatch.setattr(query, "PARSE_CHUNK", 1)  # parsed an object at a time: every chunk boundary crossed

    settings = fresh_settings(clients)
    plan = plan_landing(small_scenario(duplicate_rate=0.05, late_rate=0.1, malformed_rate=0.02), T0.timestamp(),
                        (T0 + 2 * HOUR).timestamp(), 2)
    producer.write_landing(clients.s3, settings.bucket, settings.raw_prefix, plan)
    window = scheduled_window(T0 + HOUR, T0 + 2 * HOUR, 2)
    params = {"lookback_hours": 2, "grain_seconds": 300, "out_start_epoch": int(window.out_start.timestamp()),
              "out_end_epoch": int(window.out_end.timestamp())}
    queries = [("aggregate", classify_within(params, params["out_start_epoch"], params["out_end_epoch"])),
               ("event_counts", classify_within(params, params["out_start_epoch"], params["out_end_epoch"])),
               ("rejects", classify_within(params))]
    keeping = make_engine(settings, clients)
    plain = DuckDBEngine(keeping.fs, keeping.raw_location)  # parses every line, every time
    first = [keeping.run(q, p, window.arrival_start, window.arrival_end) for q, p in queries]
    n = keeping.parsed_stats["objects_parsed"]
    # the counts read the parsed fields only; the rejects, which show the lines, read them back
    assert n >= 2 and keeping.parsed_stats["objects_reused"] == n
    again = make_engine(settings, clients)
    second = [again.run(q, p, window.arrival_start, window.arrival_end) for q, p in queries]
    assert again.parsed_stats == {"objects_parsed": 0, "objects_reused": 2 * n}
    for kept, reread, parsed in zip(first, second, [plain.run(q, p, window.arrival_start, window.arrival_end) for q, p in queries],
                                    strict=True):
        assert kept.equals(parsed) and reread.equals(parsed)
    assert first[0].num_rows > 0 and first[2].num_rows > 0

    # kept per comparison shard: each shard reads its own series' fields, the rejects every shard
    shards = next(k for k in range(2, 9) if shard_of("orders.count", k) != shard_of("temp", k))
    sharded = DuckDBEngine(keeping.fs, keeping.raw_location, keeping.parsed_location, shards=shards)
    rows = [sharded.run("aggregate", queries[0][1], window.arrival_start, window.arrival_end, shard=k).to_pandas() for k in range(shards)]
    assert sharded.parsed_stats["objects_parsed"] == n
    assert all(shard_of(name, shards) == k for k, part in enumerate(rows) for name in part["series"])
    assert sum(len(part) > 0 for part in rows) >= 2
    together = pd.concat(rows).sort_values(["series", "bucket_epoch"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(together, first[0].to_pandas())
    assert sharded.run("rejects", queries[2][1], window.arrival_start, window.arrival_end).equals(first[2])
    resharded = DuckDBEngine(keeping.fs, keeping.raw_location, keeping.parsed_location, shards=shards)
    busy = max(range(shards), key=lambda k: len(rows[k]))
    assert resharded.run("event_counts", queries[1][1], window.arrival_start, window.arrival_end, shard=busy).num_rows > 0
    assert resharded.parsed_stats == {"objects_parsed": 0, "objects_reused": n}

    key = sorted(list_keys(clients.s3, settings.bucket, settings.raw_prefix))[0]
    body = clients.s3.get_object(Bucket=settings.bucket, Key=key)["Body"].read()
    clients.s3.put_object(Bucket=settings.bucket, Key=key, Body=body + b"not json\n")  # a new ETag
    third = make_engine(settings, clients)
    rejects = third.run("rejects", classify_within(params), window.arrival_start, window.arrival_end)
    assert third.parsed_stats["objects_parsed"] == 1
    assert rejects.num_rows == first[2].num_rows + 1


@pytest.mark.stack
def test_a_copy_re_stamped_into_another_hour_counts_alike_in_every_kind_of_run(clients):
    """A retry that re-stamped its event time (00:50 landed at 00, the same id at 02:05 landed at
    02): the scheduled runs, a range run in one window and a range run hour by hour write the same
    bytes, a copy within its own hour against the copies of that hour only. (Its conflicting copy
    lands in the same hour as the one it conflicts with: one landed an hour later leaves a reject
    that depends on the run, README "How aggregation stays exact and idempotent".)"""
    settings = fresh_settings(clients)
    line = '{"event_id":"x","series":"s","event_time":"%s","value":%s}\n'
    for landed, stamp, value in ((T0, T0 + timedelta(minutes=50), 1), (T0 + 2 * HOUR, T0 + timedelta(minutes=125), 1),
                                 (T0 + 2 * HOUR, T0 + timedelta(minutes=130), 2)):  # and a conflicting copy in 02:00
        clients.s3.put_object(Bucket=settings.bucket, Key=f"{settings.raw_prefix}{landed:%Y/%m/%d/%H}/{stamp:%H%M}",
                              Body=(line % (stamp.isoformat().replace("+00:00", "Z"), value)).encode())
    later = datetime(2027, 1, 1, tzinfo=UTC)

    def written() -> dict[str, str]:
        return {k: hashlib.sha256(clients.s3.get_object(Bucket=settings.bucket, Key=k)["Body"].read()).hexdigest()
                for prefix in (settings.aggregates_prefix, "errors/") for k in list_keys(clients.s3, settings.bucket, prefix)}

    def wipe() -> None:
        for prefix in (settings.aggregates_prefix, "errors/", settings.state_prefix):
            for k in list_keys(clients.s3, settings.bucket, prefix):
                clients.s3.delete_object(Bucket=settings.bucket, Key=k)

    outcomes = []
    for runs in ([scheduled_window(T0 + k * HOUR, T0 + (k + 1) * HOUR, 2) for k in range(7)],
                 range_windows(T0, T0 + 5 * HOUR, 2, 24), range_windows(T0, T0 + 5 * HOUR, 2, 1)):
        engine = make_engine(settings, clients)
        for window in runs:
            run_window(settings, engine, clients.s3, window, now=later)
        counts = {h: int(pq.read_table(io.BytesIO(clients.s3.get_object(Bucket=settings.bucket, Key=aggregate_key(settings, T0 + h * HOUR))["Body"].read()))
                                .to_pandas()["event_count"].sum()) for h in range(5)}
        outcomes.append((counts, written()))
        wipe()
    assert outcomes[0][0] == {0: 1, 1: 0, 2: 1, 3: 0, 4: 0}
    scheduled, *ranges = outcomes
    for counts, objects in ranges:  # the scheduled runs also wrote the empty hours either side
        assert counts == scheduled[0] and objects == {k: scheduled[1][k] for k in objects}
    assert any(k.startswith("errors/") for k in scheduled[1])  # the conflicting copy, set aside alike


@pytest.mark.stack
@pytest.mark.parametrize("expired", [".lines.parquet", ".shard-001.fields.parquet"])
def test_an_object_whose_kept_files_expired_in_part_is_parsed_again(clients, expired):
    """The lifecycle rule expires the kept parsed files one by one, in no order: an object with
    any of its files gone is parsed again from the landing zone, not read half from the cache."""
    from forewarn.aggregate import classify_within
    from forewarn.query import DuckDBEngine

    settings = fresh_settings(clients)
    plan = plan_landing(small_scenario(malformed_rate=0.02), T0.timestamp(), (T0 + HOUR).timestamp(), 2)
    producer.write_landing(clients.s3, settings.bucket, settings.raw_prefix, plan)
    window = scheduled_window(T0, T0 + HOUR, 2)
    params = {"lookback_hours": 2, "grain_seconds": 300, "out_start_epoch": int(window.out_start.timestamp()),
              "out_end_epoch": int(window.out_end.timestamp())}
    queries = [("event_counts", classify_within(params, params["out_start_epoch"], params["out_end_epoch"])),
               ("rejects", classify_within(params))]
    first = make_engine(settings, clients)
    sharded = DuckDBEngine(first.fs, first.raw_location, first.parsed_location, shards=2)
    before = [sharded.run(q, p, window.arrival_start, window.arrival_end) for q, p in queries]
    kept = [k for k in list_keys(clients.s3, settings.bucket, settings.state_prefix + "parsed/") if k.endswith(expired)]
    assert kept
    clients.s3.delete_object(Bucket=settings.bucket, Key=kept[0])
    again = DuckDBEngine(first.fs, first.raw_location, first.parsed_location, shards=2)
    after = [again.run(q, p, window.arrival_start, window.arrival_end) for q, p in queries]
    assert again.parsed_stats["objects_parsed"] == 1
    assert all(a.equals(b) for a, b in zip(after, before, strict=True)) and before[1].num_rows > 0


@pytest.mark.stack
def test_rollups_write_a_series_per_dimension_value_beside_the_total_and_count_them(clients):
    """Events of one series from two regions and two channels, with ``region;region,channel``
    rolled up: the total as before, two region series and four region x channel series whose
    counts add up to the total's, each hour rewritten the same on a rerun."""
    import dataclasses

    from forewarn.events import event_line

    settings = dataclasses.replace(fresh_settings(clients), rollups="region;region,channel")
    rows = []
    for i in range(2 * 3600 // 20):  # an event every 20 s for two hours
        epoch = T0.timestamp() + 20 * i
        dims = {"region": ("eu", "us")[i % 2], "channel": ("app", "web")[(i // 2) % 2]}
        rows.append({"arrival_epoch": epoch + 30, "line": event_line(f"e{i}", "checkout.revenue", epoch, 10.0 + i % 7, dimensions=dims)})
    producer.write_landing(clients.s3, settings.bucket, settings.raw_prefix, pd.DataFrame(rows))
    engine = make_engine(settings, clients)
    windows = range_windows(T0, T0 + 2 * HOUR, 2, 4)
    summaries = [run_window(settings, engine, clients.s3, w) for w in windows]
    assert sum(s["rollup_series"] for s in summaries) >= 6 and all(s["rejected"] == 0 for s in summaries)
    aggregates = read_hours(clients.s3, settings, T0, T0 + 2 * HOUR)
    counts = aggregates.groupby("series")["event_count"].sum().to_dict()
    assert counts == {"checkout.revenue": 360, "checkout.revenue/region=eu": 180, "checkout.revenue/region=us": 180,
                      "checkout.revenue/region=eu/channel=app": 90, "checkout.revenue/region=eu/channel=web": 90,
                      "checkout.revenue/region=us/channel=app": 90, "checkout.revenue/region=us/channel=web": 90}
    before = clients.s3.get_object(Bucket=settings.bucket, Key=aggregate_key(settings, T0))["Body"].read()
    run_window(settings, engine, clients.s3, windows[0])
    assert clients.s3.get_object(Bucket=settings.bucket, Key=aggregate_key(settings, T0))["Body"].read() == before
    assert summaries[0]["rollup_values"] == {"channel": 2, "region": 2}
    assert sorted(summaries[0]["rollup_values_admitted"]) == ["channel=app", "channel=web", "region=eu", "region=us"]


@pytest.mark.stack
def test_a_keys_values_beyond_its_cap_count_as_other_and_the_catalog_never_rewrites_the_past(clients):
    """With room for three regions, two seen in the first hours and two new ones in the third:
    the busier new one gets its series from the third hour (the newest window admits it), the
    other counts as ``__other__``; the children add up to the total in every hour; rerunning the
    first window after the admission rewrites the same bytes, and so does rerunning the third."""
    import dataclasses

    from forewarn.dimensions import OTHER, read_catalog
    from forewarn.events import event_line

    settings = dataclasses.replace(fresh_settings(clients), rollups="region", rollup_max_values=3)
    rows = []
    for i in range(3 * 3600 // 30):  # an event every 30 s for three hours
        epoch = T0.timestamp() + 30 * i
        region = ("eu", "us")[i % 2] if epoch < (T0 + 2 * HOUR).timestamp() else ("ap", "ap", "sa", "eu")[i % 4]
        rows.append({"arrival_epoch": epoch + 30, "line": event_line(f"e{i}", "pay", epoch, 1.0, dimensions={"region": region})})
    producer.write_landing(clients.s3, settings.bucket, settings.raw_prefix, pd.DataFrame(rows))
    engine = make_engine(settings, clients)
    # the first window ever run is the newest of the first two hours; the older one, backfilled
    # after it, has the values it admitted too
    first = run_window(settings, engine, clients.s3, range_windows(T0 + HOUR, T0 + 2 * HOUR, 2, 1)[0])
    assert first["rollup_values_admitted"] == ["region=eu", "region=us"]
    assert run_window(settings, engine, clients.s3, range_windows(T0, T0 + HOUR, 2, 1)[0])["rollup_values_admitted"] == []
    before = clients.s3.get_object(Bucket=settings.bucket, Key=aggregate_key(settings, T0))["Body"].read()
    third = range_windows(T0 + 2 * HOUR, T0 + 3 * HOUR, 2, 1)[0]
    summary = run_window(settings, engine, clients.s3, third)
    assert summary["rollup_values_admitted"] == ["region=ap"] and summary["rollup_values"] == {"region": 3}
    catalog = read_catalog(settings, clients.s3)
    assert catalog.values["region"]["ap"] == int((T0 + 2 * HOUR).timestamp()) and catalog.high_water == int((T0 + 3 * HOUR).timestamp())
    assert catalog.values["region"]["eu"] == 0  # the first window's values: from the start of time
    aggregates = read_hours(clients.s3, settings, T0, T0 + 3 * HOUR)
    aggregates["hour"] = aggregates["bucket_start"].dt.floor("h")
    by_hour = aggregates.groupby(["hour", "series"])["event_count"].sum().unstack(fill_value=0)
    assert by_hour.loc[T0 + 2 * HOUR].to_dict() == {"pay": 120, "pay/region=ap": 60, "pay/region=eu": 30, "pay/region=us": 0,
                                                     f"pay/region={OTHER}": 30}
    assert (by_hour.loc[T0, ["pay/region=eu", "pay/region=us"]] == 60).all() and by_hour.loc[T0, "pay/region=ap"] == 0
    after = clients.s3.get_object(Bucket=settings.bucket, Key=aggregate_key(settings, T0 + 2 * HOUR))["Body"].read()
    for window, key, same in ((range_windows(T0, T0 + 2 * HOUR, 2, 2)[0], T0, before), (third, T0 + 2 * HOUR, after)):
        assert run_window(settings, engine, clients.s3, window)["rollup_values_admitted"] == []
        assert clients.s3.get_object(Bucket=settings.bucket, Key=aggregate_key(settings, key))["Body"].read() == same
