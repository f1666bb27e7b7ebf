"""Which dimension moved: the roll-up children that make up a parent's deviation."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd

from forewarn.dimensions import child_values, cloudwatch_dimensions, contributors, of_series, words
from forewarn.publish import Incident

T = pd.Timestamp("2026-11-20 10:00", tz="UTC")
SETS = (("region",), ("region", "channel"))


def evidence(rows: dict[str, tuple[float, float]], metric: str = "value_sum", buckets: int = 3) -> pd.DataFrame:
    """Each series' (actual, forecast) in every one of ``buckets`` buckets."""
    return pd.DataFrame([{"series": s, "metric": metric, "bucket_start": T + pd.Timedelta(minutes=5 * b), "actual": a, "mean": m}
                         for s, (a, m) in rows.items() for b in range(buckets)])


def test_a_regional_drop_is_named_by_its_region_with_its_share():
    # revenue should be 1000 (eu 600, us 400); eu fell to 200: 400 of the 400 shortfall
    ev = evidence({"pay": (600.0, 1000.0), "pay/region=eu": (200.0, 600.0), "pay/region=us": (398.0, 400.0),
                   "pay/region=eu/channel=app": (40.0, 420.0), "pay/region=eu/channel=web": (160.0, 180.0),
                   "pay/region=us/channel=app": (199.0, 200.0), "pay/region=us/channel=web": (199.0, 200.0)})
    found = contributors(ev, "pay", "value_sum", SETS)
    assert [c["series"] for c in found] == ["pay/region=eu"]  # one child explains it: the coarser set wins
    assert found[0]["dimensions"] == {"region": "eu"} and found[0]["share"] == 1.0 and found[0]["deviation"] == -1200.0
    assert words(found) == "100% region=eu"
    # only the region x channel set declared: app in eu carries 95%
    deep = contributors(ev, "pay", "value_sum", (("region", "channel"),))
    assert [c["series"] for c in deep] == ["pay/region=eu/channel=app"] and deep[0]["share"] == 0.95


def test_a_spread_deviation_names_children_until_eighty_percent_and_nothing_without_children():
    ev = evidence({"pay": (700.0, 1000.0), "pay/region=eu": (400.0, 500.0), "pay/region=us": (200.0, 300.0),
                   "pay/region=ap": (100.0, 200.0), "pay/region=sa": (0.0, 0.0)})
    found = contributors(ev, "pay", "value_sum", SETS)
    assert [(c["series"], c["share"]) for c in found] == [("pay/region=ap", 0.333), ("pay/region=eu", 0.333),
                                                            ("pay/region=us", 0.333)]
    assert contributors(ev, "other", "value_sum", SETS) == []
    assert contributors(ev, "pay", "event_count", SETS) == []  # another metric
    assert contributors(evidence({"pay": (5.0, 5.0)}), "pay", "value_sum", SETS) == []  # nothing to explain
    # children pulling the other way explain nothing
    assert contributors(evidence({"pay": (900.0, 1000.0), "pay/region=eu": (600.0, 500.0)}), "pay", "value_sum", SETS) == []
    # only the buckets since the episode began count
    late = evidence({"pay": (900.0, 1000.0), "pay/region=eu": (400.0, 500.0)})
    assert contributors(late, "pay", "value_sum", SETS, since=T + pd.Timedelta(hours=1)) == []


def test_children_are_told_from_look_alike_names():
    assert child_values("pay", "pay/region=eu", ("region",)) == {"region": "eu"}
    assert child_values("pay", "pay/region=eu/channel=app", ("region",)) is None
    assert child_values("pay", "payments/region=eu", ("region",)) is None
    assert child_values("pay", "pay/channel=app", ("region",)) is None
    assert child_values("pay", "pay/region=", ("region",)) is None


def test_a_roll_up_carries_its_dimension_values_to_cloudwatch():
    assert of_series("pay/region=eu/channel=app") == {"region": "eu", "channel": "app"}
    assert of_series("pay") == of_series("a/b.c") == {} and of_series("a/b/region=eu") == {"region": "eu"}
    assert cloudwatch_dimensions("pay/region=eu", "value_sum") == [
        {"Name": "Series", "Value": "pay/region=eu"}, {"Name": "Metric", "Value": "value_sum"}, {"Name": "region", "Value": "eu"}]
    assert cloudwatch_dimensions("pay", "value_sum") == [{"Name": "Series", "Value": "pay"}, {"Name": "Metric", "Value": "value_sum"}]


def test_the_incident_says_where_in_its_title_summary_and_raw_data():
    inc = Incident(episode="pay|2026-11-20T10:00", series="pay", metric="value_sum", started=datetime(2026, 11, 20, 10, tzinfo=UTC),
                   direction="below", actual=600.0, expected=1000.0, lower=900.0, upper=1100.0, likelihood=0.9, impact=2,
                   evidence_uri="s3://b/e", contributors=[{"series": "pay/region=eu", "dimensions": {"region": "eu"}, "share": 0.85,
                                                           "deviation": -340.0}])
    assert inc.title.startswith("pay value_sum dropped below its forecast (85% region=eu): 600 vs expected 1,000")
    assert "Where: 85% region=eu of the deviation (1 of its roll-up series)." in inc.summary
    assert inc.facts()["contributors"][0]["share"] == 0.85
    inc.contributors = []
    assert "region" not in inc.title and "contributors" not in inc.facts()


def test_a_child_that_opens_while_its_parent_is_open_joins_it_and_is_never_sent_alone():
    from forewarn.dimensions import fold_children, parent_of
    from forewarn.episodes import Episode

    assert parent_of("pay/region=eu", SETS) == "pay" and parent_of("pay/region=eu/channel=app", SETS) == "pay"
    assert parent_of("pay/channel=app", SETS) is None and parent_of("pay", SETS) is None

    def opened(series: str) -> tuple[str, Incident]:
        return "open", Incident(episode=f"{series}|2026-11-20T10:00", series=series, metric="value_sum",
                                started=datetime(2026, 11, 20, 10, tzinfo=UTC), direction="below", actual=1.0, expected=2.0,
                                lower=1.5, upper=2.5, likelihood=0.9, impact=3, evidence_uri="")

    episodes = {s: Episode(id=f"{s}|2026-11-20T10:00", started="2026-11-20T10:00:00+00:00", last_anomalous="", metric="value_sum")
                for s in ("pay", "pay/region=eu", "shop/region=eu")}
    actions, joined, _ = fold_children([opened("pay"), opened("pay/region=eu"), opened("shop/region=eu")], episodes, [], SETS)
    assert [i.series for _, i in actions] == ["pay", "shop/region=eu"]  # shop's total is not anomalous: eu opens alone
    assert actions[0][1].related == ["pay/region=eu"] and joined == {}
    assert episodes["pay/region=eu"].member_of == "pay|2026-11-20T10:00" and episodes["pay/region=eu"].reported
    # its updates and its resolution are not sent; a later child joins with an update of the parent
    update = ("update", opened("pay/region=eu")[1])
    episodes["pay/region=us"] = Episode(id="pay/region=us|2026-11-20T11:00", started="2026-11-20T11:00:00+00:00", last_anomalous="",
                                        metric="value_sum")
    actions, joined, _ = fold_children([update, opened("pay/region=us")], episodes, [], SETS)
    assert actions == [] and joined == {"pay": ["pay/region=us"]} and episodes["pay"].members == ["pay/region=eu", "pay/region=us"]
    gone = episodes.pop("pay/region=eu")
    resolve = ("resolve", opened("pay/region=eu")[1])
    assert fold_children([resolve], episodes, [("pay/region=eu", gone)], SETS) == ([], {}, set())

    # the parent's episode ends while us is still down: us is released, to be opened on its own
    del episodes["pay"]
    update = ("update", opened("pay/region=us")[1])
    assert fold_children([update], episodes, [], SETS) == ([], {}, set())
    assert episodes["pay/region=us"].member_of == "" and not episodes["pay/region=us"].reported


def test_a_child_that_falls_first_waits_for_its_parent_then_joins_it_or_opens_alone():
    """A region often shows a drop a bucket or two before its total: its new episode is held
    for ``hold`` while the parent is calm; the parent opening within it takes the child in (one
    incident); a child whose parent stays calm opens on its own once the hold is over, and a
    blip that ends within the hold is never sent."""
    from datetime import timedelta

    from forewarn.dimensions import fold_children
    from forewarn.episodes import Episode

    t0 = datetime(2026, 11, 20, 10, tzinfo=UTC)

    def opened(series: str, at: datetime) -> tuple[str, Incident]:
        return "open", Incident(episode=f"{series}|{at:%Y-%m-%dT%H:%M}", series=series, metric="value_sum", started=at,
                                direction="below", actual=1.0, expected=2.0, lower=1.5, upper=2.5, likelihood=0.9, impact=3,
                                evidence_uri="")

    def episode(series: str, at: datetime) -> Episode:
        return Episode(id=f"{series}|{at:%Y-%m-%dT%H:%M}", started=at.isoformat(), last_anomalous="", metric="value_sum")

    hold = timedelta(minutes=10)
    episodes = {"pay/region=eu": episode("pay/region=eu", t0)}
    out, joined, waiting = fold_children([opened("pay/region=eu", t0)], episodes, [], SETS, now=t0 + timedelta(minutes=5), hold=hold)
    assert out == [] and waiting == {"pay/region=eu"} and not episodes["pay/region=eu"].reported
    # five minutes later the total falls: one incident, on it, with eu related from the start
    episodes["pay"] = episode("pay", t0 + timedelta(minutes=5))
    out, joined, waiting = fold_children([opened("pay", t0 + timedelta(minutes=5))], episodes, [], SETS,
                                         now=t0 + timedelta(minutes=10), hold=hold)
    assert [(k, i.series, i.related) for k, i in out] == [("open", "pay", ["pay/region=eu"])] and waiting == set()
    assert episodes["pay/region=eu"].member_of == "pay|2026-11-20T10:05" and episodes["pay/region=eu"].reported
    # us falls alone and its total stays calm: held, then left to open on its own once the hold is over
    alone = {"pay/region=us": episode("pay/region=us", t0)}
    assert fold_children([opened("pay/region=us", t0)], alone, [], SETS, now=t0 + timedelta(minutes=5), hold=hold)[2] == {"pay/region=us"}
    out, _, waiting = fold_children([], alone, [], SETS, now=t0 + timedelta(minutes=10), hold=hold)
    assert out == [] and waiting == set() and not alone["pay/region=us"].reported  # the run's late pass opens it
    # a blip that ends within the hold: never opened, so never resolved
    blip = episode("pay/region=ap", t0)
    resolve = ("resolve", opened("pay/region=ap", t0)[1])
    assert fold_children([resolve], {}, [("pay/region=ap", blip)], SETS, now=t0 + timedelta(minutes=5), hold=hold)[0] == []


def test_only_what_adds_up_over_children_and_pulls_the_episodes_way_is_explained():
    ev = evidence({"pay": (600.0, 1000.0), "pay/region=eu": (200.0, 600.0), "pay/region=us": (400.0, 400.0)}, metric="value_mean")
    assert contributors(ev, "pay", "value_mean", SETS) == []  # a mean does not add up over regions
    ev = evidence({"pay": (600.0, 1000.0), "pay/region=eu": (200.0, 600.0), "pay/region=us": (400.0, 400.0)}, metric="event_count")
    assert contributors(ev, "pay", "event_count", SETS, direction="above") == []  # a shortfall cannot explain a rise
    assert contributors(ev, "pay", "event_count", SETS, direction="below")[0]["share"] == 1.0


def test_a_set_names_its_keys_in_the_order_they_first_appear():
    from forewarn.config import Settings

    assert Settings(rollups="region;channel,region").rollup_sets == (("region",), ("region", "channel"))


def test_a_roll_up_series_can_be_labelled_and_never_collides_with_an_event_series():
    from forewarn.events import is_series_name, is_valid_series
    from forewarn.labels import parse_label

    child = "x" * 128 + "/region=eu/channel=app"
    assert is_series_name(child) and not is_valid_series(child) and not is_valid_series("pay/region=eu")
    assert parse_label({"target": f"{child}|2026-11-20T10:00", "as": "real"}).series == child
    assert not is_series_name("pay/Region=eu") and not is_series_name("pay/region=eu/a=1/b=2/c=3")


def test_an_incident_led_by_a_mean_is_explained_by_its_count_deviation():
    from forewarn.dimensions import accumulate
    from forewarn.episodes import Episode

    ev = evidence({"pay": (600.0, 1000.0), "pay/region=eu": (200.0, 600.0), "pay/region=us": (400.0, 400.0)}, metric="event_count")
    ep = Episode(id="pay|2026-11-20T10:00", started=T.isoformat(), last_anomalous="", metric="value_mean", direction="above",
                 deviations=[{"metric": "value_mean", "direction": "above", "since": T.isoformat()},
                             {"metric": "event_count", "direction": "below", "since": T.isoformat()}])
    assert [c["series"] for c in accumulate(ev, "pay", ep, SETS)] == ["pay/region=eu"] and ep.explained["metric"] == "event_count"


def test_a_producers_episodes_that_open_together_are_one_incident_held_open_until_all_recover():
    from forewarn.dimensions import fold_children
    from forewarn.episodes import Episode

    def opened(series: str) -> tuple[str, Incident]:
        return "open", Incident(episode=f"{series}|2026-11-20T10:00", series=series, metric="event_count",
                                started=datetime(2026, 11, 20, 10, tzinfo=UTC), direction="below", actual=0.0, expected=20.0,
                                lower=10.0, upper=30.0, likelihood=0.99, impact=2, evidence_uri="")

    names = ["eu.views", "eu.carts", "eu.orders", "us.orders"]
    episodes = {s: Episode(id=f"{s}|2026-11-20T10:00", started="2026-11-20T10:00:00+00:00", last_anomalous="", metric="event_count")
                for s in names}
    sources = {"eu.views": "eu", "eu.carts": "eu", "eu.orders": "eu", "us.orders": "us"}
    actions, joined, _ = fold_children([opened(s) for s in names], episodes, [], (), sources)
    assert [(i.series, i.related) for _, i in actions] == [("eu.carts", ["eu.views", "eu.orders"]), ("us.orders", [])]
    # carts recovers first: its incident stays open (held) while views and orders are silent
    leader = episodes.pop("eu.carts")
    resolve = ("resolve", opened("eu.carts")[1])
    actions, _, _ = fold_children([resolve], episodes, [("eu.carts", leader)], (), sources)
    assert actions == [] and episodes["eu.carts"] is leader and episodes["eu.views"].member_of == leader.id
    # once they have recovered too, it resolves
    for s in ("eu.views", "eu.orders"):
        episodes.pop(s)
    episodes.pop("eu.carts")
    actions, _, _ = fold_children([resolve], episodes, [("eu.carts", leader)], (), sources)
    assert [k for k, _ in actions] == ["resolve"]


def test_a_roll_up_series_is_in_its_series_shard():
    from forewarn.config import Settings
    from forewarn.layout import shard_of

    for i in range(200):
        parent = f"svc{i}.a/b:c"
        for child in (f"{parent}/region=eu", f"{parent}/region=eu/channel=app.v2"):
            assert shard_of(child, 7) == shard_of(parent, 7)
    assert len({shard_of(f"svc{i}/region=eu", 7) for i in range(200)}) == 7  # spread like their series
    assert Settings(compare_shards=4, rollups="region").rollup_sets == (("region",),)


def test_the_shares_are_summed_over_the_whole_episode_not_one_noisy_bucket():
    """Each run adds its buckets to the episode's sums: a bucket where eu's drop looks like 70%
    of the parent's shortfall and one where it looks like 95% make 82.5% over the episode."""
    from forewarn.dimensions import accumulate
    from forewarn.episodes import Episode

    ep = Episode(id="pay|2026-11-20T10:00", started=T.isoformat(), last_anomalous="", metric="value_sum", direction="below")
    first = evidence({"pay": (800.0, 1000.0), "pay/region=eu": (360.0, 500.0), "pay/region=us": (440.0, 500.0)}, buckets=1)
    named = accumulate(first, "pay", ep, SETS)
    assert [(c["series"], c["share"]) for c in named] == [("pay/region=eu", 0.7), ("pay/region=us", 0.3)]  # 70% alone is not 80%
    second = evidence({"pay": (800.0, 1000.0), "pay/region=eu": (310.0, 500.0), "pay/region=us": (490.0, 500.0)}, buckets=1)
    second["bucket_start"] += pd.Timedelta(minutes=5)
    named = accumulate(second, "pay", ep, SETS)
    assert [(c["series"], c["share"]) for c in named] == [("pay/region=eu", 0.825)]
    assert ep.explained["sums"]["pay"] == -400.0 and ep.explained["named"] == named


def test_the_members_that_recovered_are_told_on_the_incident_they_joined():
    from forewarn.dimensions import members_recovered
    from forewarn.episodes import Episode

    lead = Episode(id="pay|2026-11-20T10:00", started=T.isoformat(), last_anomalous="", metric="value_sum")
    eu = Episode(id="pay/region=eu|2026-11-20T10:00", started=T.isoformat(), last_anomalous="", metric="value_sum",
                 member_of=lead.id)
    stale = Episode(id="x/region=eu|2026-11-20T09:00", started=T.isoformat(), last_anomalous="", metric="value_sum",
                    member_of="x|2026-11-20T08:00")
    assert members_recovered([("pay/region=eu", eu), ("x/region=eu", stale)], {"pay": lead}) == {"pay": ["pay/region=eu"]}
    assert members_recovered([("pay/region=eu", eu)], {}) == {}  # the incident it joined has ended too


def test_a_patterns_regex_matches_what_fnmatch_does_and_is_always_valid():
    """The per-series settings' patterns reach the aggregation SQL as regular expressions:
    fnmatch's bracket rules (``[!]]``, empty ranges such as ``z-a``, an unclosed ``[``) and any
    punctuation come out valid and matching the same names, in DuckDB as Trino reads them."""
    import fnmatch
    import random

    import duckdb
    import sqlglot

    from forewarn.dimensions import _glob_regex

    rng = random.Random(5)  # noqa: S311 - test data
    alphabet = "ab.-_*?[]!^$'\\&|z"
    names = ["".join(rng.choice("ab.-_]![z'^$&") for _ in range(rng.randint(0, 5))) for _ in range(60)]
    patterns = ["orders.[!]]*", "x[z-a]", "[!]", "[]a]", "a[", "it's*", "[a-c&&b]", "[!a-z]?"]
    patterns += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))) for _ in range(300)]
    con = duckdb.connect()
    for pattern in patterns:
        regex = _glob_regex(pattern)
        # as the aggregation query has it: a Trino regexp_like, translated for DuckDB
        query = sqlglot.transpile(f"SELECT regexp_like(n, '{regex}') FROM t", read="trino", write="duckdb")[0]  # noqa: S608 - the literal under test
        got = con.execute(query.replace("FROM t", "FROM (SELECT unnest(?) AS n)"), [names]).fetchall()
        got = [bool(row[0]) for row in got]
        assert got == [fnmatch.fnmatchcase(n, pattern) for n in names], (pattern, regex)


def test_a_roll_ups_parent_is_its_event_series_whatever_sets_are_declared():
    from forewarn.dimensions import parent_of

    sets = (("region",), ("channel",), ("region", "channel"))
    assert parent_of("pay/region=eu/channel=app", sets) == "pay"  # not pay/region=eu
    assert parent_of("pay/region=eu/channel=app", (("region",), ("channel",))) is None  # no such set
    assert parent_of("a/b/region=eu", sets) == "a/b" and parent_of("pay", sets) is None


def test_a_rule_added_never_renames_another_series_roll_ups():
    from forewarn.config import Settings
    from forewarn.dimensions import rollup_plan
    from forewarn.series_settings import parse_series_settings

    one = parse_series_settings("series:\n  - match: pay\n    rollups: region,channel\n", "s", ["event_count"])
    two = parse_series_settings("series:\n  - match: api\n    rollups: zone\n  - match: pay\n    rollups: region,channel\n",
                                "s", ["event_count"])
    assert rollup_plan(Settings(), one).sets_for("pay") == rollup_plan(Settings(), two).sets_for("pay") == (("channel", "region"),)
    assert rollup_plan(Settings(rollups="region"), two).keys == ("region", "channel", "zone")


def test_two_windows_writing_the_catalog_at_once_keep_both_admissions():
    from forewarn.dimensions import Catalog, read_catalog, write_catalog

    class S3:
        class exceptions:  # noqa: N801 - boto3's shape
            NoSuchKey = KeyError

        def __init__(self):
            self.body = None

        def get_object(self, Bucket, Key):  # noqa: N803
            if self.body is None:
                raise KeyError(Key)
            return {"Body": __import__("io").BytesIO(self.body)}

        def put_object(self, Bucket, Key, Body, ContentType=None):  # noqa: N803
            self.body = Body

    class Settings:
        bucket, state_prefix = "b", "state/"

    s3 = S3()
    write_catalog(Settings, s3, Catalog({"region": {"eu": 0, "us": 7200}}, high_water=10800))
    write_catalog(Settings, s3, Catalog({"region": {"eu": 0, "sa": 3600}}, high_water=7200))  # an older window, written last
    got = read_catalog(Settings, s3)
    assert got.values == {"region": {"eu": 0, "us": 7200, "sa": 3600}} and got.high_water == 10800
