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


def _watched(tmp_path, port: int, grace: float) -> Standalone:
    airflow = Standalone({"AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": str(port)}, tmp_path / "standalone.log", grace=grace)
    airflow.log.write_text("scheduler  | 2026-12-07T06:09:58Z [error    ] database is locked\n"
                           "api-server | 2026-12-07T06:09:59Z [warning  ] ASGI app factory detected.\n")
    # a stand-in for the standalone process: alive until stopped
    airflow.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)  # noqa: S603
    airflow._healthy_at = airflow._polled_at = time.monotonic()
    return airflow


def test_a_healthy_scheduler_is_no_stall_and_one_without_a_heartbeat_past_the_grace_is(health, tmp_path):
    state, port = health
    airflow = _watched(tmp_path, port, grace=0.6)
    try:
        assert airflow.stalled() is None
        state["scheduler"] = "unhealthy"
        time.sleep(0.3)
        assert airflow.stalled() is None  # within the grace: a slow heartbeat, not a stall
        time.sleep(0.4)
        why = airflow.stalled()
        assert why is not None and why.startswith("the scheduler has been unhealthy for") and "last heartbeat None" in why
        state["scheduler"] = "healthy"
        assert airflow.stalled() is None  # a heartbeat again: the clock starts over
        state["answer"] = False
        time.sleep(0.4)
        assert airflow.stalled() is None
        time.sleep(0.4)
        assert airflow.stalled().startswith("the API server has not answered for")
        account = airflow.diagnose()
        assert "database is locked" in account and "ASGI" not in account and f"pid {airflow.proc.pid}" in account
    finally:
        stop_group(airflow.proc, timeout=5)


def test_an_unwatched_stretch_is_not_counted_and_an_exited_airflow_is_a_stall(health, tmp_path):
    state, port = health
    airflow = _watched(tmp_path, port, grace=0.3)
    try:
        state["scheduler"] = "unhealthy"
        time.sleep(0.5)  # nobody watched for longer than the grace: the count starts now
        assert airflow.stalled() is None
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
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(group_members(leader.pid)) < 2:
        time.sleep(0.1)
    assert len(group_members(leader.pid)) == 2
    started = time.monotonic()
    stop_group(leader, timeout=5, linger=1)
    assert time.monotonic() - started < 10
    time.sleep(0.5)
    assert group_members(leader.pid) == [], "a member of the group outlived stop_group"

