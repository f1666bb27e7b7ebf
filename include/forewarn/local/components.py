"""Airflow's four components on one machine — API server, scheduler, dag-processor, triggerer —
as ``airflow standalone`` runs them, with two differences:

- nothing listens beyond loopback: the API server on ``AIRFLOW__API__HOST``, and no log server
  (standalone's scheduler and triggerer each serve task logs on every interface, on fixed
  ports 8793 and 8794; here the task logs are files on this machine, which the API server reads);
- the others start once the API server answers, so no task is launched against an execution
  API that is not listening yet (standalone starts all four at once: "Connection refused", then
  retries, at every start).

Each component's output is relayed line by line with its name in front, as standalone does. It
exits when any component does (with that one's code, or 1), so whoever watches it
(``forewarn.local.airflow.Standalone``) sees the stall and restarts the whole group; SIGTERM or
SIGINT to it alone stops every component first (with their last words in the log), and on
Linux a component is sent SIGTERM if the launcher dies any other way.

    python -m forewarn.local.components      # in the environment ``airflow_env`` gives
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

from forewarn.local.airflow import airflow_bin

#: How long the API server has to answer before the others start anyway (their calls retry).
API_WAIT_SECONDS = 300.0

_write = threading.Lock()


def _relay(name: str, stream, out=None) -> None:
    """Copy a component's output to ``out`` (this process's stdout), a line at a time with the
    component's name in front. The pipe is drained to its end whatever happens to ``out`` (a
    full disk): a component whose pipe is not read blocks once it fills."""
    out = out or sys.stdout.buffer
    for line in iter(stream.readline, b""):
        try:
            with _write:
                out.write(f"{name:<13} | ".encode() + line)
                out.flush()
        except (OSError, ValueError):
            continue


try:  # looked up once, before any thread starts: a forked child must not import
    import ctypes

    _PRCTL = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _PRCTL = None


def _die_with_parent() -> None:
    """In a component, before it runs: on Linux, SIGTERM it when the launcher dies, even by
    SIGKILL, so no component outlives it."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def main() -> int:
    env = dict(os.environ)
    # bound where the environment says, else loopback: never Airflow's own default, every interface
    host, port = env.get("AIRFLOW__API__HOST") or "127.0.0.1", int(env.get("AIRFLOW__API__PORT") or "8080")
    procs: dict[str, subprocess.Popen] = {}
    relays: list[threading.Thread] = []
    stopping = threading.Event()

    def start(name: str, *args: str) -> None:
        proc = subprocess.Popen([airflow_bin(), name, *args], env=env, stdout=subprocess.PIPE,  # noqa: S603 - the venv's airflow
                                stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)  # noqa: PLW1509 - no threads hold locks it needs
        relay = threading.Thread(target=_relay, args=(name, proc.stdout), daemon=True)
        relay.start()
        relays.append(relay)
        procs[name] = proc

    def stop(signum, _frame) -> None:  # SIGTERM or SIGINT to the launcher alone: the components go too
        stopping.set()
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    start("api-server", "--host", host, "--port", str(port))
    deadline = time.monotonic() + API_WAIT_SECONDS
    while (not listening(host, port) and procs["api-server"].poll() is None and not stopping.is_set()
           and time.monotonic() < deadline):
        time.sleep(0.5)
    if procs["api-server"].poll() is None and not stopping.is_set():
        start("scheduler", "--skip-serve-logs")
        start("dag-processor")
        start("triggerer", "--skip-serve-logs")
    while not stopping.is_set():
        ended = [(name, proc.returncode) for name, proc in procs.items() if proc.poll() is not None]
        if ended:
            name, code = ended[0]
            with _write:
                print(f"{'components':<13} | {name} exited ({code}); stopping the others", flush=True)
            break
        time.sleep(1)
    else:
        code = 0
    for proc in procs.values():
        if proc.poll() is None:
            proc.terminate()
    for proc in procs.values():
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for relay in relays:  # what they said while shutting down reaches the log
        relay.join(timeout=5)
    return 0 if stopping.is_set() else (code if code and code > 0 else 1)


if __name__ == "__main__":
    sys.exit(main())
