"""``forewarn airflow`` (``make airflow``): Airflow 3's API server and UI, scheduler,
dag-processor and triggerer (``forewarn.local.components``) on the embedded stack, with a live producer, until Ctrl-C.

Before Airflow starts, the history the DAGs need is prepared in-process: 28 days of events in the
landing zone, aggregated, and a forecast trained for today, so the first scheduled
``forewarn_compare`` run already has something to compare with. Then events flow through
Kinesis every minute; ``forewarn produce --inject drop --series orders.count`` in another shell
makes an incident appear within the compare schedule plus a few minutes.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from forewarn import producer
from forewarn.aggregate import make_engine, range_windows, run_window
from forewarn.config import Settings
from forewarn.local import stack
from forewarn.local.airflow import Standalone, airflow_env, ensure_db
from forewarn.synth import Anomaly, load_scenario, plan_landing
from forewarn.train import day_floor, train_all

UI_PORT = 8080
#: Restarts of a stalled Airflow (``Standalone.stalled``) before ``forewarn airflow`` gives up.
MAX_RESTARTS = 3


def prepare(clients: Any, settings: Settings, days: int, out: Any) -> float:
    """History up to now in the landing zone, aggregated, and today's forecast; returns now."""
    now = time.time()
    today = day_floor(datetime.fromtimestamp(now, UTC))
    start = today - timedelta(days=days)
    scenario = load_scenario(live_start=now + 10 * 86400)  # no injected anomalies in the history
    plan = plan_landing(scenario, start.timestamp(), now, settings.lookback_hours)
    producer.write_landing(clients.s3, settings.bucket, settings.raw_prefix, plan)
    out(f"   history: {len(plan):,} events over {days} days in the landing zone")
    engine = make_engine(settings, clients)
    for window in range_windows(start, datetime.fromtimestamp(now, UTC), settings.lookback_hours, 24 * 7):
        run_window(settings, engine, clients.s3, window)
    out("   aggregated")
    manifest = train_all(settings, clients.s3, today)
    out(f"   forecast for {today:%Y-%m-%d} trained: {manifest['fits']} fits {manifest['by_model']}")
    return now


def injections_path(home: Path) -> Path:
    """Where ``forewarn produce --inject`` leaves anomalies for a running live producer."""
    return home / "live" / "injections.json"


def pid_path(home: Path) -> Path:
    """The process id of a running ``forewarn airflow`` (its live producer) in this home."""
    return home / "live" / "producer.pid"


def live_running(home: Path) -> bool:
    try:
        os.kill(int(pid_path(home).read_text()), 0)
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return False
    return True


def add_injection(home: Path, anomaly: Anomaly) -> None:
    path = injections_path(home)
    doc = json.loads(path.read_text()) if path.exists() else []
    doc.append(asdict(anomaly))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)


class LiveProducer(threading.Thread):
    """Every minute, the scenario's events of the minute just past, through Kinesis, with the
    anomalies ``forewarn produce --inject`` asked for applied to them."""

    def __init__(self, clients: Any, settings: Settings, since: float, home: Path | None = None):
        super().__init__(name="live-producer", daemon=True)
        self.kinesis = clients.client("kinesis")
        self.settings = settings
        self.scenario = load_scenario(live_start=since + 10 * 86400)
        self.base_anomalies = list(self.scenario.anomalies)
        self.home = home
        self.since = since
        self.stopping = threading.Event()
        self.sent = 0

    def _injected(self) -> list[Anomaly]:
        if self.home is None or not injections_path(self.home).exists():
            return []
        try:
            return [Anomaly(**a) for a in json.loads(injections_path(self.home).read_text())]
        except (ValueError, TypeError) as exc:
            print(f"live producer: ignoring {injections_path(self.home)} ({exc})", flush=True)
            return []

    def run(self) -> None:
        while not self.stopping.wait(60):
            now = time.time()
            self.scenario.anomalies = self.base_anomalies + self._injected()
            plan = plan_landing(self.scenario, self.since, now, self.settings.lookback_hours, seed_offset=int(now), send_at=now)
            if len(plan):
                self.sent += producer.send_plan(self.kinesis, self.settings.stream_name, plan)
            self.since = now


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def run_live(home: Path, port: int, days: int = 28, out: Any = print) -> int:
    # Ctrl-C, and SIGTERM from a supervisor, both stop everything cleanly.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    settings = Settings.load({"engine": "duckdb", "settle_minutes": 1})
    out(f"1. embedded AWS stack on 127.0.0.1:{port}")
    state = stack.up(port=port, home=home)
    clients = stack.local_clients(state["port"])
    airflow = None
    feeder = None
    try:
        out("2. preparing history and today's forecast")
        now = prepare(clients, settings, days, out)
        env = airflow_env(home, state["port"])
        env.update({
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__API__PORT": str(UI_PORT),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{UI_PORT}/execution/",
            "FOREWARN_SETTLE_MINUTES": "1",
            "FOREWARN_COMPARE_DELAY_MINUTES": "1",
            "FOREWARN_INCIDENT_SINKS": "incident_manager,sns,pagerduty,slack",
            "FOREWARN_RESPONSE_PLAN_ARN": state["resources"]["response_plan"],
        })
        ensure_db(env)
        live_dir = home / "live"
        live_dir.mkdir(parents=True, exist_ok=True)
        injections_path(home).unlink(missing_ok=True)
        pid_path(home).write_text(str(os.getpid()))
        feeder = LiveProducer(clients, settings, now, home)
        feeder.start()
        log = home / "airflow" / "components.log"
        airflow = Standalone(env, log, grace=120)
        airflow.start()
        out(f"3. Airflow 3: API server, scheduler, dag-processor, triggerer (pid {airflow.proc.pid}, log {log})")
        out(f"   UI: http://127.0.0.1:{UI_PORT}  (no login locally: every user is admin)")
        out(f"   incidents: aws ssm-incidents list-incident-records --endpoint-url {state['incidents_endpoint']}")
        out(f"   pages: {state['webhooks_endpoint']}/pagerduty/alerts   Slack: {state['webhooks_endpoint']}/slack/messages")
        out("   inject: .venv/bin/forewarn produce --minutes 20 --inject drop --series orders.count   (the live producer applies it from now)")
        out("   Ctrl-C stops Airflow, the producer and the stack.")
        while True:
            time.sleep(5)
            why = airflow.stalled()
            if not why:
                continue
            if airflow.restarts >= MAX_RESTARTS:
                out(f"Airflow stalled again ({why}) after {airflow.restarts} restarts; stopping.\n{airflow.diagnose()}")
                return 1
            out(f"Airflow stalled ({why}); restarting it ({airflow.restarts + 1} of at most {MAX_RESTARTS}): "
                f"runs wait in its database and resume.\n{airflow.diagnose()}")
            airflow.restart()
    except KeyboardInterrupt:
        out("\nstopping")
        return 0
    finally:
        if feeder:
            feeder.stopping.set()
        pid_path(home).unlink(missing_ok=True)
        if airflow:
            airflow.stop()
        stack.down(home)
