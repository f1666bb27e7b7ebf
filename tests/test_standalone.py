"""The watch over ``airflow standalone`` (``forewarn.local.airflow.Standalone``): what counts as a
stall, judged against a stand-in health endpoint on loopback and a stand-in process."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from forewarn.local.airflow import Standalone, group_members, stop_group


@pytest.fixture
def health():
    """A loopback server answering ``/api/v2/monitor/health`` with the scheduler status in ``state``."""
    state = {"scheduler": "healthy", "answer": True}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            if not state["answer"]:
                self.send_response(503)
                self.end_headers()
                return
            body = json.dumps({"metadatabase": {"status": "healthy"},
                               "scheduler": {"status": state["scheduler"], "latest_scheduler_heartbeat": None}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield state, server.server_address[1]
    server.shutdown()
    server.server_close()


class Clock:
    """A clock the test moves by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _watched(tmp_path, port: int, clock: Clock) -> Standalone:
    airflow = Standalone({"AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": str(port)}, tmp_path / "standalone.log",
                         grace=90, startup=300, clock=clock)
    airflow.log.write_text("scheduler  | 2026-12-07T06:09:58Z [error    ] database is locked\n"
                           "api-server | 2026-12-07T06:09:59Z [warning  ] ASGI app factory detected.\n")
    # a stand-in for the standalone process (alive until stopped), watched by hand (observe)
    airflow.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)  # noqa: S603
    airflow.reset_watch()
    return airflow


def test_a_healthy_scheduler_is_no_stall_and_one_unhealthy_past_the_grace_is(health, tmp_path):
    state, port = health
    clock = Clock()
    airflow = _watched(tmp_path, port, clock)
    try:
        airflow.observe()
        assert airflow.stalled() is None
        state["scheduler"] = "unhealthy"
        clock.now += 60
        airflow.observe()
        assert airflow.stalled() is None  # within the grace: a slow heartbeat, not a stall
        clock.now += 31
        airflow.observe()
        why = airflow.stalled()
        assert why == "the scheduler has been unhealthy for 91 s (last heartbeat None)"
        state["scheduler"] = "healthy"
        airflow.observe()
        assert airflow.stalled() is None  # a heartbeat again: the clock starts over
        state["answer"] = False
        clock.now += 60
        airflow.observe()
        assert airflow.stalled() is None
        clock.now += 31
        airflow.observe()
        assert airflow.stalled() == "the API server has not answered for 91 s"
        account = airflow.diagnose()
        assert "database is locked" in account and "ASGI" not in account and f"pid {airflow.proc.pid}" in account
    finally:
        stop_group(airflow.proc, timeout=5)


def test_a_starting_airflow_has_until_its_startup_time_and_an_exited_one_is_a_stall(health, tmp_path):
    state, port = health
    clock = Clock()
    airflow = _watched(tmp_path, port, clock)
    try:
        state["scheduler"] = "unhealthy"  # what the health endpoint says before the first heartbeat
        clock.now += 299
        airflow.observe()
        assert airflow.stalled() is None  # starting, not stalled, however long past the grace
        clock.now += 2
        airflow.observe()
        assert airflow.stalled() == "no healthy scheduler 301 s after Airflow started"
        stop_group(airflow.proc, timeout=5)
        assert airflow.stalled().startswith("Airflow exited")
    finally:
        stop_group(airflow.proc, timeout=5)


def test_stopping_a_group_ends_the_orphans_that_outlive_its_leader_and_ignore_sigterm():
    """As the LocalExecutor's workers of a scheduler killed outright do: a member of the group
    whose parent is gone and which ignores SIGTERM is killed once the leader has exited."""
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(120)"
    leader = subprocess.Popen(  # noqa: S603 - our interpreter, a fixed script
        [sys.executable, "-c", f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {stubborn!r}]); time.sleep(120)"],
        start_new_session=True, stdout=subprocess.PIPE, text=True,
    )
    assert leader.stdout.readline().strip() == "ready"  # the child ignores SIGTERM from here on
    assert len(group_members(leader.pid)) == 2
    started = time.monotonic()
    stop_group(leader, timeout=2)
    assert time.monotonic() - started < 10
    leader.stdout.close()
    time.sleep(0.5)
    assert group_members(leader.pid) == [], "a member of the group outlived stop_group"



def test_the_watch_thread_records_the_health_it_sees_until_it_is_stopped(health, tmp_path):
    state, port = health
    airflow = _watched(tmp_path, port, Clock())
    airflow.poll = 0.05
    stopping = threading.Event()
    watcher = threading.Thread(target=airflow._watch, args=(stopping,), daemon=True)
    try:
        watcher.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not airflow._ever_healthy:
            time.sleep(0.05)
        assert airflow._ever_healthy and airflow._last["scheduler"]["status"] == "healthy"
        stopping.set()
        watcher.join(timeout=10)
        state["scheduler"] = "unhealthy"
        time.sleep(0.2)
        assert airflow._last["scheduler"]["status"] == "healthy"  # a stopped watch records nothing more
    finally:
        stopping.set()
        stop_group(airflow.proc, timeout=5)


def test_a_components_output_is_drained_even_when_its_log_cannot_be_written():
    """A component whose output pipe is not read blocks once the pipe fills: the launcher's relay
    keeps draining it when writing the log fails (a full disk)."""
    import os

    from forewarn.local.components import _relay

    class FullDisk:
        def write(self, _data: bytes) -> int:
            raise OSError(28, "No space left on device")

        def flush(self) -> None:
            pass

    read_end, write_end = os.pipe()

    def component() -> None:
        with os.fdopen(write_end, "wb") as out:
            for _ in range(20_000):  # 300 KB: several times a pipe's buffer
                out.write(b"a line of output\n")

    writer = threading.Thread(target=component)
    writer.start()
    with os.fdopen(read_end, "rb") as stream:
        _relay("scheduler", stream, FullDisk())
    writer.join(timeout=10)
    assert not writer.is_alive()
