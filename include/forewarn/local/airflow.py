"""Running the project's DAGs with a real Airflow on SQLite, pointed at the embedded stack."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
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
            # `airflow standalone` starts its components as `airflow ...`: find this venv's first
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
    """End a process started with ``start_new_session=True`` and everything it started (Airflow
    standalone and its API server, scheduler, dag-processor and triggerer): SIGTERM to the whole
    group, SIGKILL if it has not gone within ``timeout`` seconds."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass
