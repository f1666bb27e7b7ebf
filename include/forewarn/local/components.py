"""Airflow's four components on one machine — API server, scheduler, dag-processor, triggerer —
as ``airflow standalone`` runs them, with two differences:

- nothing listens beyond loopback: the API server on ``AIRFLOW__API__HOST``, and no log server
  (standalone's scheduler and triggerer each serve task logs on every interface, on fixed
  ports 8793 and 8794; here the task logs are files on this machine, which the API server reads);
- the others start once the API server answers, so no task is launched against an execution
  API that is not listening yet (standalone starts all four at once: "Connection refused", then
  retries, at every start).

Each component's output is relayed line by line with its name in front, as standalone does. It
exits when any component does (with that one's code), so whoever watches it
(``forewarn.local.airflow.Standalone``) sees the stall and restarts the whole group.

    python -m forewarn.local.components      # in the environment ``airflow_env`` gives
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

from forewarn.local.airflow import airflow_bin

#: How long the API server has to answer before the others start anyway (their calls retry).
API_WAIT_SECONDS = 300.0

_write = threading.Lock()


def _relay(name: str, stream) -> None:
    for line in iter(stream.readline, b""):
        with _write:
            sys.stdout.buffer.write(f"{name:<13} | ".encode() + line)
            sys.stdout.buffer.flush()


def listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def main() -> int:
    env = dict(os.environ)
    host, port = env.get("AIRFLOW__API__HOST", "127.0.0.1"), int(env.get("AIRFLOW__API__PORT", "8080"))
    procs: dict[str, subprocess.Popen] = {}

    def start(name: str, *args: str) -> None:
        proc = subprocess.Popen([airflow_bin(), name, *args], env=env, stdout=subprocess.PIPE,  # noqa: S603 - the venv's airflow
                                stderr=subprocess.STDOUT)
        threading.Thread(target=_relay, args=(name, proc.stdout), daemon=True).start()
        procs[name] = proc

    start("api-server")
    deadline = time.monotonic() + API_WAIT_SECONDS
    while not listening(host, port) and procs["api-server"].poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    if procs["api-server"].poll() is None:
        start("scheduler", "--skip-serve-logs")
        start("dag-processor")
        start("triggerer", "--skip-serve-logs")
    while True:
        ended = [(name, proc.returncode) for name, proc in procs.items() if proc.poll() is not None]
        if ended:
            break
        time.sleep(1)
    name, code = ended[0]
    with _write:
        print(f"{'components':<13} | {name} exited ({code}); stopping the others", flush=True)
    for proc in procs.values():
        if proc.poll() is None:
            proc.terminate()
    for proc in procs.values():
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return code or 1


if __name__ == "__main__":
    sys.exit(main())
