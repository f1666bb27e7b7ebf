"""Running the project's DAGs with a real Airflow on SQLite, pointed at the embedded stack."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from forewarn.local.stack import local_connection, webhook_connections

PROJECT_ROOT = Path(__file__).resolve().parents[3]


class AirflowError(RuntimeError):
    """An Airflow command failed; the message carries the end of its output."""


def airflow_env(home: Path, port: int, dags_folder: Path | None = None) -> dict[str, str]:
    """Environment for Airflow commands: its own home and SQLite database, the project's DAGs, the
    ``aws_default`` connection on the stack's endpoint, and the local engine. Nothing else differs
    from a deployment on AWS."""
    airflow_home = home / "airflow"
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder or PROJECT_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": "forewarn.local.sqlite.CONNECT_ARGS",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC": "forewarn.local.sqlite.CONNECT_ARGS_ASYNC",
            # a task's calls to the execution API may wait that long for the database too
            "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "90",
            "AIRFLOW_CONN_AWS_DEFAULT": local_connection(port),
            **webhook_connections(port),
            "FOREWARN_ENGINE": "duckdb",
            "FOREWARN_SETTLE_MINUTES": "0",
            "OMP_NUM_THREADS": "1",
            # Airflow's components may start `airflow ...` themselves: find this venv's first
            "PATH": f"{Path(airflow_bin()).parent}{os.pathsep}{env.get('PATH', '')}",
        }
    )
    return env


def airflow_bin() -> str:
    candidate = Path(sys.executable).with_name("airflow")
    return str(candidate) if candidate.exists() else (shutil.which("airflow") or "airflow")


def run_airflow(env: dict[str, str], *args: str, log: Path | None = None) -> str:
    """Run one ``airflow`` CLI command; raise with its output's tail when it fails."""
    proc = subprocess.run(  # noqa: S603 - fixed executable, arguments from this module
        [airflow_bin(), *args], env=env, capture_output=True, text=True, check=False
    )
    output = proc.stdout + proc.stderr
    if log:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as handle:
            handle.write(f"$ airflow {' '.join(args)}\n{output}\n")
    finished = [line for line in output.splitlines() if "DagRun Finished" in line]
    if proc.returncode != 0 or (args[:2] == ("dags", "test") and not any("state=success" in f for f in finished)):
        tail = "\n  ".join(output.strip().splitlines()[-25:])
        raise AirflowError(f"`airflow {' '.join(args)}` failed:\n  {tail}")
    return output


def ensure_db(env: dict[str, str], log: Path | None = None) -> None:
    db = Path(env["AIRFLOW_HOME"]) / "airflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    run_airflow(env, "db", "migrate", log=log)
    write_ahead_log(db)


def write_ahead_log(db: Path) -> str:
    """Put the SQLite metadata database in write-ahead-log mode (kept in the file) and return the
    mode. In SQLite's default rollback mode a reader blocks a writer: when the API server holds a
    read open in one session while its other session waits to write (as ``POST /backfills``
    does), and the scheduler waits to commit, all three wait out the busy timeout. With a WAL,
    readers never block the one writer."""
    with sqlite3.connect(db) as conn:
        return conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]


def dags_test(env: dict[str, str], dag_id: str, logical_date: str, conf: dict | None = None, log: Path | None = None) -> str:
    args = ["dags", "test", dag_id, logical_date]
    if conf:
        args += ["-c", json.dumps(conf)]
    return run_airflow(env, *args, log=log)


def dags_test_many(env: dict[str, str], dag_id: str, logical_dates: list[str], log: Path | None = None) -> list[float]:
    """``dag.test()`` for each logical date in one Airflow process (the CLI would start Airflow
    once per run). Returns each run's seconds; raises if a run does not succeed."""
    script = (
        "import json, sys, time\n"
        "from datetime import datetime\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        "dag = DagBag(dag_folder=sys.argv[1]).dags[sys.argv[2]]\n"
        "for stamp in sys.argv[3:]:\n"
        "    t = time.monotonic()\n"
        "    run = dag.test(logical_date=datetime.fromisoformat(stamp))\n"
        "    print('RUN', stamp, run.state, round(time.monotonic() - t, 2), flush=True)\n"
        "    if run.state != 'success':\n"
        "        sys.exit(f'{sys.argv[2]} {stamp} ended {run.state}')\n"
    )
    dag_file = Path(env["AIRFLOW__CORE__DAGS_FOLDER"]) / f"{dag_id}.py"
    proc = subprocess.run(  # noqa: S603 - our interpreter, a fixed script
        [sys.executable, "-c", script, str(dag_file), dag_id, *logical_dates], env=env, capture_output=True, text=True, check=False
    )
    output = proc.stdout + proc.stderr
    if log:
        with log.open("a") as handle:
            handle.write(f"$ dag.test {dag_id} x{len(logical_dates)}\n{output}\n")
    if proc.returncode != 0:
        tail = "\n  ".join(output.strip().splitlines()[-25:])
        raise AirflowError(f"dag.test of {dag_id} failed:\n  {tail}")
    return [float(line.split()[3]) for line in proc.stdout.splitlines() if line.startswith("RUN ")]


def stop_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """End a process started with ``start_new_session=True`` and everything it started (the
    launcher of Airflow's API server, scheduler, dag-processor and triggerer, and them): SIGTERM to the whole
    group, then SIGKILL to it if any live member (the leader or another) is left after
    ``timeout`` seconds. The members count, not only the leader: the LocalExecutor's workers of a
    scheduler that died abruptly are orphans in the group that outlive a SIGTERM
    (``group_members``: on Linux)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (proc.poll() is None or group_members(proc.pid)):
        time.sleep(0.2)
    if proc.poll() is None or group_members(proc.pid):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def group_members(pgid: int) -> list[int]:
    """The live processes of a process group (zombies left out: an orphan that has exited stays
    one until something reaps it), read from /proc."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


#: Lines of the components' log that explain a stall, and the noise that matches them anyway.
_NOTABLE = re.compile(r"\[(error|warning|critical) *\]|Traceback|Error:|Deactivat|locked|exited|Shutting down")
_NOISE = re.compile(r"ASGI app factory|HMAC key|deprecated|XCom not found|Starting call to")


class Standalone:
    """Airflow's API server, scheduler, dag-processor and triggerer (``forewarn.local.components``:
    as ``airflow standalone`` runs them, on loopback only, the API server first) in a process
    group of its own, their output appended to ``log``, under watch.

    Nothing restarts a component that died, so a scheduler that crashed (or hangs on the
    SQLite database) leaves every run queued while the UI still answers. A thread polls Airflow's
    health endpoint every ``poll`` seconds, and ``stalled`` says why Airflow needs a restart:
    it exited; no healthy scheduler within ``startup`` seconds of starting; or, once one has
    been, the endpoint has not called it healthy (it does 30 s after its last heartbeat) for
    ``grace`` seconds, the API server not answering counted the same. A supervisor on a
    deployment restarts it; ``restart`` does the same here, and the runs, kept in the metadata
    database, are picked up by the new scheduler. ``clock`` is for tests."""

    def __init__(self, env: dict[str, str], log: Path, grace: float = 90.0, startup: float = 300.0, poll: float = 5.0,
                 clock=time.monotonic):
        self.env, self.log, self.grace, self.startup, self.poll, self.clock = env, log, grace, startup, poll, clock
        self.base = f"http://{env.get('AIRFLOW__API__HOST', '127.0.0.1')}:{env.get('AIRFLOW__API__PORT', '8080')}"
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._stop_watch = threading.Event()
        self.reset_watch()

    def reset_watch(self) -> None:
        """Start the clocks afresh: Airflow is (re)starting."""
        self._started_at = self._healthy_at = self.clock()
        self._ever_healthy = False
        self._last: dict | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as handle:
            self.proc = subprocess.Popen(  # noqa: S603 - the venv's airflow
                [sys.executable, "-m", "forewarn.local.components"], env=self.env, stdout=handle, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.reset_watch()
        self._stop_watch = threading.Event()
        threading.Thread(target=self._watch, args=(self._stop_watch,), name="airflow-health", daemon=True).start()

    def _watch(self, stopping: threading.Event) -> None:
        while not stopping.wait(self.poll):
            doc = self.health()
            if not stopping.is_set():  # an answer from before a restart says nothing of the new start
                self._record(doc)

    def observe(self) -> None:
        """One look at the health endpoint, by hand (a test's; the watch thread does the same)."""
        self._record(self.health())

    def _record(self, doc: dict | None) -> None:
        self._last = doc
        if doc is not None and (doc.get("scheduler") or {}).get("status") == "healthy":
            self._healthy_at = self.clock()
            self._ever_healthy = True

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 60) -> None:
        self._stop_watch.set()
        if self.proc is not None:
            stop_group(self.proc, timeout=timeout)

    def restart(self) -> None:
        self.restarts += 1
        self.stop()
        self.start()

    def get(self, path: str, token: str | None = None) -> dict:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        req = urllib.request.Request(f"{self.base}{path}", headers=headers)  # noqa: S310 - loopback
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
            return json.loads(resp.read() or b"{}")

    def health(self) -> dict | None:
        """Airflow's ``/api/v2/monitor/health`` (no login needed), or None while it does not answer."""
        try:
            doc = self.get("/api/v2/monitor/health")
        except (OSError, ValueError, http.client.HTTPException):
            return None
        return doc if isinstance(doc, dict) else None

    def stalled(self) -> str | None:
        """Why Airflow needs a restart, or None."""
        if not self.alive():
            return f"Airflow exited ({self.proc.returncode if self.proc else None})"
        now = self.clock()
        if not self._ever_healthy:
            if now - self._started_at > self.startup:
                return f"no healthy scheduler {now - self._started_at:.0f} s after Airflow started"
            return None
        if now - self._healthy_at > self.grace:
            if self._last is None:
                return f"the API server has not answered for {now - self._healthy_at:.0f} s"
            last = (self._last.get("scheduler") or {}).get("latest_scheduler_heartbeat")
            return f"the scheduler has been unhealthy for {now - self._healthy_at:.0f} s (last heartbeat {last})"
        return None

    def diagnose(self, dag_id: str | None = None, token: str | None = None) -> str:
        """What a stall looks like from outside: health, the DAG's flags and import errors (with a
        ``token``), and the log's last warnings and errors."""
        facts = [f"Airflow pid {self.proc.pid if self.proc else None}, alive {self.alive()}, log {self.log}",
                 f"health: {json.dumps(self.health())}"]
        if token and self.alive():
            paths = ([f"/api/v2/dags/{dag_id}"] if dag_id else []) + ["/api/v2/importErrors"]
            for path in paths:
                try:
                    doc = self.get(path, token)
                except (OSError, ValueError, http.client.HTTPException) as exc:
                    doc = {"error": repr(exc)}
                if path.startswith("/api/v2/dags/") and isinstance(doc, dict):
                    doc = {k: doc.get(k) for k in ("is_paused", "is_stale", "has_import_errors", "last_parsed_time", "error")}
                facts.append(f"{path}: {json.dumps(doc, default=str)[:1500]}")
        try:
            lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        except OSError:
            lines = []
        notable = [ln[:300] for ln in lines if _NOTABLE.search(ln) and not _NOISE.search(ln)]
        facts.append("log, last warnings and errors:\n  " + "\n  ".join(notable[-25:]))
        return "\n".join(facts)
