"""Airflow 3 backfills, run by a real scheduler (``forewarn.local.components``: API server, scheduler,
dag-processor, triggerer; LocalExecutor on SQLite) against the embedded stack.

One past day is first run the way the schedule runs it (``dag.test`` for each scheduled logical
date), its outputs are kept and deleted, then the same range is backfilled — forewarn_aggregate
through the CLI (``airflow backfill create``), forewarn_train and forewarn_compare through the
REST API (``POST /api/v2/backfills``) — and every output must come back byte for byte. The day
is 16 days old, so the comparison's metrics fall outside CloudWatch's 14 days and are counted as
skipped, and its backfill opens no incident although the day holds a drop that opened one when
it ran as scheduled."""

from __future__ import annotations

import http.client
import ipaddress
import json
import time
import urllib.error
import urllib.request
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from forewarn import producer
from forewarn.aggregate import make_engine, range_windows, run_window
from forewarn.local.airflow import (
    Standalone,
    airflow_env,
    dags_test,
    dags_test_many,
    ensure_db,
    run_airflow,
    write_ahead_log,
)
from forewarn.synth import Anomaly, Quality, Scenario, SeriesSpec, plan_landing

from conftest import free_port
from helpers import fresh_settings, list_keys, listening_addresses

pytestmark = [pytest.mark.stack, pytest.mark.timeout(2400)]  # a restart may add 15 minutes to a wait

GRAIN = 900
DAY = (datetime.now(tz=UTC) - timedelta(days=16)).replace(hour=0, minute=0, second=0, microsecond=0)
DROP_AT = DAY + timedelta(hours=2)
COMPARE_FROM, COMPARE_TO = DAY + timedelta(hours=2, minutes=15), DAY + timedelta(hours=3)


def _stamp(moment: datetime) -> str:
    return moment.isoformat()


def _snapshot(s3, bucket: str, prefixes: list[str]) -> dict[str, bytes]:
    return {key: s3.get_object(Bucket=bucket, Key=key)["Body"].read() for prefix in prefixes for key in list_keys(s3, bucket, prefix)}


def _delete(s3, bucket: str, keys) -> None:
    for key in keys:
        s3.delete_object(Bucket=bucket, Key=key)


def _explain(key: str, a: dict[str, bytes], b: dict[str, bytes]) -> str:
    if not key.endswith(".parquet"):
        return f"{len(a[key])} vs {len(b[key])} bytes"
    import io

    import pyarrow.parquet as pq

    left, right = (pq.read_table(io.BytesIO(x[key])).to_pandas() for x in (a, b))
    if left.shape != right.shape:
        return f"shape {left.shape} vs {right.shape}"
    return str(left.compare(right))


class Api:
    """Airflow's REST API as a user's script calls it: a token, then JSON."""

    def __init__(self, base: str):
        self.base = base
        self.login()

    def login(self) -> None:
        with urllib.request.urlopen(f"{self.base}/auth/token", timeout=30) as resp:  # noqa: S310 - loopback
            self.token = json.loads(resp.read())["access_token"]

    def call(self, method: str, path: str, body: dict | None = None, retry: tuple[int, ...] = (503,)) -> dict:
        """One request; a 503 (Airflow's answer when its SQLite database is busy) is retried, and a
        401 (a restarted API server signs with a new key) logs in again."""
        for attempt in range(10):
            req = urllib.request.Request(  # noqa: S310 - loopback
                f"{self.base}{path}", method=method, data=json.dumps(body).encode() if body is not None else None,
                headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
            )
            try:  # longer than SQLite's busy timeout, so a wait for the database ends as a 503
                with urllib.request.urlopen(req, timeout=150) as resp:  # noqa: S310
                    return json.loads(resp.read() or b"{}")
            except urllib.error.HTTPError as exc:
                if exc.code == 401 and attempt < 9:
                    self.login()
                    continue
                if exc.code not in retry or attempt == 9:
                    raise
                time.sleep(2 + attempt)
        raise AssertionError("unreachable")

    def create_backfill(self, dag_id: str, from_date: datetime, to_date: datetime, max_active_runs: int | None = 1) -> dict:
        """``POST /api/v2/backfills``, one active run at a time. On SQLite a request that waits out
        the busy timeout behind another writer can fail as a 500 as well as a 503 (Airflow: "not
        supported on SQLite under concurrent access"); it is sent again, and a 409 (the backfill
        exists: an earlier attempt got through) returns the backfill that attempt created."""
        body = {"dag_id": dag_id, "from_date": _stamp(from_date), "to_date": _stamp(to_date)}
        if max_active_runs is not None:  # None: Airflow's default (10), whatever the DAG's own
            body["max_active_runs"] = max_active_runs
        try:
            return self.call("POST", "/api/v2/backfills", body, retry=(500, 503))
        except urllib.error.HTTPError as exc:
            if exc.code != 409:
                raise
        (active,) = [b for b in self.call("GET", f"/api/v2/backfills?dag_id={dag_id}")["backfills"] if not b.get("completed_at")]
        return active

    def runs(self, dag_id: str) -> list[dict]:
        return self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns?run_type=backfill&limit=100")["dag_runs"]

    def wait_for_backfill(self, dag_id: str, expected: int, airflow: Standalone, timeout: float = 900) -> list[dict]:
        """Wait until the backfill's ``expected`` runs have succeeded; fail at once if one fails.

        Runs that stay queued for ``STALL_S`` seconds with none running, or what
        ``Standalone.stalled`` reports (Airflow exited, a scheduler unhealthy for 90 s, or none
        healthy 5 minutes after a start), are a stalled scheduler: ``airflow standalone`` never
        restarts a component that died. The test records why as a warning (the scheduler's
        health, the DAG's paused and stale flags, its import errors, the log's last errors) and
        restarts Airflow once a wait, as a supervisor would on a deployment: the runs live in the
        metadata database and the new scheduler picks them up. A second stall fails the test
        with the same account."""
        deadline = time.monotonic() + timeout
        seen, since = None, time.monotonic()
        allowed = airflow.restarts + 1
        while time.monotonic() < deadline:
            try:  # an API that does not answer is for the watch (Standalone.stalled) to judge
                runs = self.runs(dag_id) if airflow.alive() else None
            except urllib.error.HTTPError as exc:
                if exc.code < 500:
                    raise
                runs = None
            except (OSError, http.client.HTTPException):
                runs = None
            if runs is not None:
                failed = [r["dag_run_id"] for r in runs if r["state"] == "failed"]
                assert not failed, f"backfill runs of {dag_id} failed: {failed}"
                if len(runs) == expected and all(r["state"] == "success" for r in runs):
                    return runs
                states = sorted((r["dag_run_id"], r["state"]) for r in runs)
                if states != seen:
                    seen, since = states, time.monotonic()
            now = time.monotonic()
            why = airflow.stalled() or (f"{len(runs)} runs queued {now - since:.0f} s, none running"
                                        if runs and all(r["state"] == "queued" for r in runs) and now - since > STALL_S else None)
            if why:
                account = f"{dag_id}: {why}\n{airflow.diagnose(dag_id, self.token)}"
                assert airflow.restarts < allowed, f"stalled again after a restart; {account}"
                warnings.warn(f"restarting Airflow; {account}", stacklevel=2)
                airflow.restart()
                self.token = wait_for_dags(airflow).token
                deadline = max(deadline, time.monotonic() + 600)
                seen, since = None, time.monotonic()
                continue
            time.sleep(5)
        raise TimeoutError(f"backfill of {dag_id}: {seen}\n{airflow.diagnose(dag_id, self.token)}")


#: Backfill runs all queued this long, none running, are a stalled scheduler (one promotes a
#: queued run within seconds).
STALL_S = 180


def wait_for_dags(airflow: Standalone, timeout: float = 240) -> Api:
    """Once Airflow's API answers and lists the project's DAGs: a logged-in client."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert airflow.alive(), airflow.log.read_text()[-3000:]
        try:
            api = Api(airflow.base)
            dags = {d["dag_id"] for d in api.call("GET", "/api/v2/dags")["dags"]}
            if {"forewarn_aggregate", "forewarn_train", "forewarn_compare"} <= dags:
                return api
        except OSError:
            pass
        time.sleep(3)
    raise TimeoutError(f"Airflow did not list the DAGs:\n{airflow.log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def day(clients, aws_stack, tmp_path_factory):
    """Nine days of landed events (a drop on orders.count at 02:00 of the day under test), the
    eight days before it aggregated, and the day run as scheduled."""
    settings = fresh_settings(clients, grain_seconds=GRAIN, training_days=8, compare_minutes=15)
    home = tmp_path_factory.mktemp("backfill-airflow")
    env = airflow_env(home / "scheduled", aws_stack["port"])
    env.pop("AIRFLOW__CORE__UNIT_TEST_MODE", None)
    env.update({f"FOREWARN_{name.upper()}": str(getattr(settings, name)) for name in (
        "bucket", "stream_name", "delivery_stream", "glue_database", "sns_topic", "grain_seconds", "training_days", "compare_minutes")})
    env["FOREWARN_COMPARE_DELAY_MINUTES"] = "0"
    scenario = Scenario([SeriesSpec("orders.count", rate=4.0, weekly_amplitude=0.0),
                         SeriesSpec("temp", kind="gauge", period_s=300, value_mean=5, value_sd=0.1, weekly_amplitude=0.0)],
                        anomalies=[Anomaly("drop", "orders.count", DROP_AT.timestamp(), 7200, 0.05)],
                        quality=Quality(duplicate_rate=0.01, late_rate=0.05, very_late_rate=0.005, malformed_rate=0.01), seed=5)
    start, end = DAY - timedelta(days=8), DAY + timedelta(days=1, hours=2)
    producer.write_landing(clients.s3, settings.bucket, settings.raw_prefix, plan_landing(scenario, start.timestamp(), end.timestamp(), settings.lookback_hours))
    engine = make_engine(settings, clients)
    for window in range_windows(start, DAY - timedelta(hours=1), settings.lookback_hours, 24 * 8):
        run_window(settings, engine, clients.s3, window)
    ensure_db(env)
    hours = [_stamp(DAY + timedelta(hours=h)) for h in range(24)]
    dags_test_many(env, "forewarn_aggregate", hours)
    dags_test(env, "forewarn_train", _stamp(DAY + timedelta(minutes=30)))
    compare_dates = [_stamp(COMPARE_FROM + timedelta(minutes=15 * k)) for k in range(4)]
    dags_test_many(env, "forewarn_compare", compare_dates)
    # The backfills run in an Airflow of their own (its own metadata database), as on a
    # deployment where the day was scheduled long ago: no run of the day exists there yet.
    live = {**airflow_env(home / "live", aws_stack["port"]), **{k: v for k, v in env.items() if k.startswith("FOREWARN_")},
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False"}
    live.pop("AIRFLOW__CORE__UNIT_TEST_MODE", None)
    ensure_db(live)
    assert write_ahead_log(Path(live["AIRFLOW_HOME"]) / "airflow.db") == "wal"
    run_airflow(live, "dags", "reserialize")
    return settings, live, home


@pytest.fixture(scope="module")
def standalone(day):
    settings, env, home = day
    port = free_port()
    env = {**env,
           "AIRFLOW__CORE__EXECUTOR": "LocalExecutor", "AIRFLOW__CORE__PARALLELISM": "4",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
           "AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": str(port),
           "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
           "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2", "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
           # only the backfills run: no scheduled run of today writes to the database beside them
           "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
           "PYTHONUNBUFFERED": "1"}  # the log shows what happened up to a failure
    airflow = Standalone(env, home / "standalone.log")
    try:
        airflow.start()
        api = wait_for_dags(airflow)
        yield settings, env, api, airflow
    finally:
        airflow.stop()


def test_backfilled_day_reproduces_the_scheduled_outputs(day, clients, request):
    settings, env, _ = day
    s3 = clients.s3
    outputs = [f"{settings.aggregates_prefix}dt={DAY:%Y-%m-%d}/", f"{settings.forecasts_prefix}run={DAY:%Y-%m-%dT%H}/",
               f"{settings.errors_prefix}rejected/{DAY:%Y/%m/%d}/"]
    scheduled = _snapshot(s3, settings.bucket, outputs)
    assert sum(k.startswith(outputs[0]) for k in scheduled) == 23 and sum(k.startswith(outputs[1]) for k in scheduled) >= 3
    assert sum(k.startswith(outputs[2]) for k in scheduled) >= 20  # the day's rejects, one file per landing hour that has some
    _delete(s3, settings.bucket, scheduled)

    out = run_airflow(env, "backfill", "create", "--dag-id", "forewarn_aggregate", "--from-date", _stamp(DAY),
                      "--to-date", _stamp(DAY + timedelta(hours=23)), "--max-active-runs", "3")
    assert "forewarn_aggregate" in out
    _, _, api, airflow = request.getfixturevalue("standalone")  # the scheduler runs what the CLI created
    api.create_backfill("forewarn_train", DAY, DAY + timedelta(hours=23))
    assert len(api.wait_for_backfill("forewarn_aggregate", 24, airflow)) == 24
    assert len(api.wait_for_backfill("forewarn_train", 1, airflow)) == 1

    backfilled = _snapshot(s3, settings.bucket, outputs)
    assert sorted(backfilled) == sorted(scheduled)
    differ = [k for k in scheduled if backfilled[k] != scheduled[k]]
    assert not differ, f"backfill wrote different bytes for {differ}: {_explain(differ[0], scheduled, backfilled)}"


def _states(s3, bucket: str, prefix: str) -> dict[str, dict]:
    """The state objects under ``prefix`` by moment, decoded, without what names their chain
    (and whether a sink was told of an episode, which a backfill never does)."""
    from forewarn.state import decode_state

    out = {}
    for key, body in _snapshot(s3, bucket, [prefix]).items():
        state = decode_state(body)
        doc = {k: v for k, v in state.doc.items() if k != "chain"}
        episodes = {k: {f: v for f, v in ep.__dict__.items() if f != "reported"} for k, ep in state.episodes.items()}
        # NaN (an empty slot of the forecast-quality window) as None: NaN never equals itself
        memory = {name: [None if x != x else x for x in a.ravel().tolist()] for name, a in state.memory.arrays().items()}
        out[key.rsplit("/", 1)[-1]] = {"doc": doc, "keys": state.keys, "episodes": episodes, "memory": memory}
    return out


def test_compare_backfill_matches_schedule_opens_no_incident_and_counts_old_points(standalone, clients):
    from forewarn.registry import list_records

    settings, env, api, airflow = standalone
    s3 = clients.s3
    records = list_records(s3, settings.bucket)
    assert len(records) == 1  # the drop, opened when the day ran as scheduled
    assert list_keys(s3, settings.bucket, f"{settings.forecasts_prefix}run={DAY:%Y-%m-%dT%H}/"), \
        "the day's forecast is missing: the train backfill of the test before did not rewrite it"
    evidence = [f"compare/dt={DAY:%Y-%m-%d}/"]
    live_prefix = f"{settings.state_prefix}compare/{DAY:%Y-%m-%d}T"
    backfill_prefix = f"{settings.state_prefix}compare-backfill/{DAY:%Y-%m-%d}T"
    scheduled = _snapshot(s3, settings.bucket, evidence)
    assert len(scheduled) == 4
    live = _snapshot(s3, settings.bucket, [live_prefix])
    assert len(live) == 4
    _delete(s3, settings.bucket, [*scheduled, *list_keys(s3, settings.bucket, "incidents/")])

    # Airflow's default max_active_runs (10) for a backfill: the intervals still run in order
    backfill = api.create_backfill("forewarn_compare", COMPARE_FROM, COMPARE_TO, max_active_runs=None)
    assert backfill["dag_id"] == "forewarn_compare"
    runs = api.wait_for_backfill("forewarn_compare", 4, airflow)

    backfilled = _snapshot(s3, settings.bucket, evidence)
    assert sorted(backfilled) == sorted(scheduled)
    assert [k for k in scheduled if backfilled[k] != scheduled[k]] == []
    # the backfill kept its own chain: the live states are the bytes they were, and its own
    # states hold the same detectors and episodes
    assert _snapshot(s3, settings.bucket, [live_prefix]) == live
    assert _states(s3, settings.bucket, backfill_prefix) == _states(s3, settings.bucket, live_prefix)
    assert list_records(s3, settings.bucket) == []  # the past is recorded, nobody is paged
    # each interval's comparison began after the one before it had ended
    spans = sorted((run["logical_date"], api.call("GET", f"/api/v2/dags/forewarn_compare/dagRuns/{run['dag_run_id']}/taskInstances/compare"))
                   for run in runs)
    for (_, before), (_, after) in zip(spans, spans[1:], strict=False):
        assert after["start_date"] >= before["end_date"], (before, after)
    opened = 0
    for run in runs:
        xcom = api.call("GET", f"/api/v2/dags/forewarn_compare/dagRuns/{run['dag_run_id']}/taskInstances/compare/xcomEntries/return_value")
        summary = xcom["value"] if isinstance(xcom["value"], dict) else json.loads(xcom["value"])
        metrics = summary["metrics"]
        assert metrics["sent"] == 0 and metrics["skipped_too_old"] > 0, summary
        assert summary["incidents_opened"] == 0
        opened += summary["episodes_opened"]
    assert opened == 1  # the drop is still recorded as an episode (state and evidence)


def test_airflow_listens_on_loopback_only(standalone):
    """Airflow's components listen on loopback only: the API server where it is told, and no log
    server (``airflow standalone``'s scheduler and triggerer serve logs on every interface)."""
    from forewarn.local.airflow import group_members

    _, env, _, airflow = standalone
    addresses = listening_addresses(group_members(airflow.proc.pid))
    assert ("127.0.0.1", int(env["AIRFLOW__API__PORT"])) in addresses
    assert all(ipaddress.ip_address(host).is_loopback for host, _ in addresses), addresses
