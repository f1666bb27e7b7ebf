"""The embedded AWS stand-in: moto's server on loopback, the resources forewarn needs, and the
Kinesis -> Firehose leg moto does not run.

``forewarn stack up`` starts one detached process (``python -m forewarn.local.stack serve``) that
owns the moto server and the forwarder, and records its pid and endpoint in
``$FOREWARN_HOME/stack/state.json``; ``forewarn stack down`` ends exactly that process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from forewarn.aws import AwsClients, connection_json
from forewarn.catalog import ensure_tables
from forewarn.config import Settings

log = logging.getLogger(__name__)
DEFAULT_PORT = 5055
ACCOUNT = "123456789012"


class StackError(RuntimeError):
    """The stack cannot start or stop; the message says what to do."""


def home_dir() -> Path:
    return Path(os.environ.get("FOREWARN_HOME", ".forewarn")).resolve()


def state_path(home: Path | None = None) -> Path:
    return (home or home_dir()) / "stack" / "state.json"


def endpoint(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def incidents_endpoint(port: int) -> str:
    """The Incident Manager stand-in listens on the port after moto's."""
    return endpoint(port + 1)


def webhooks_endpoint(port: int) -> str:
    """The PagerDuty and Slack stand-ins listen on the port two after moto's."""
    return endpoint(port + 2)


def webhook_connections(port: int) -> dict[str, str]:
    """The Airflow connections (``AIRFLOW_CONN_*`` variables) that point the pagerduty and
    slack sinks at the stack's stand-ins, shaped as an operator would create them for the real
    services: the routing key / the webhook URL in the password."""
    from forewarn.local.webhooks import PAGERDUTY_PATH, SLACK_PATH, STANDIN_ROUTING_KEY

    base = webhooks_endpoint(port)
    return {"AIRFLOW_CONN_FOREWARN_PAGERDUTY": json.dumps({"conn_type": "http", "host": base + PAGERDUTY_PATH,
                                                           "password": STANDIN_ROUTING_KEY}),
            "AIRFLOW_CONN_FOREWARN_SLACK": json.dumps({"conn_type": "http", "password": base + SLACK_PATH})}


def local_connection(port: int) -> str:
    return connection_json(endpoint(port), incidents_url=incidents_endpoint(port))


def local_clients(port: int) -> AwsClients:
    return AwsClients.from_connection_json(local_connection(port))


# --------------------------------------------------------------------------------------------
# Resources
# --------------------------------------------------------------------------------------------


def bootstrap(clients: AwsClients, settings: Settings, shards: int = 2) -> dict[str, str]:
    """Create what forewarn uses, or leave it as it is when it exists (safe to repeat)."""
    s3 = clients.s3
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
        s3.create_bucket(Bucket=settings.bucket)

    kinesis = clients.client("kinesis")
    try:
        kinesis.create_stream(StreamName=settings.stream_name, ShardCount=shards)
    except kinesis.exceptions.ResourceInUseException:
        pass
    kinesis.get_waiter("stream_exists").wait(StreamName=settings.stream_name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 50})

    firehose = clients.client("firehose")
    try:
        firehose.create_delivery_stream(
            DeliveryStreamName=settings.delivery_stream,
            DeliveryStreamType="DirectPut",  # the forwarder stands in for the Kinesis source
            ExtendedS3DestinationConfiguration={
                "RoleARN": f"arn:aws:iam::{ACCOUNT}:role/forewarn-firehose",
                "BucketARN": f"arn:aws:s3:::{settings.bucket}",
                "Prefix": settings.raw_prefix,
                "ErrorOutputPrefix": f"{settings.errors_prefix}firehose/",
                "BufferingHints": {"SizeInMBs": 5, "IntervalInSeconds": settings.firehose_buffer_seconds},
            },
        )
    except firehose.exceptions.ResourceInUseException:
        pass

    ensure_tables(clients.client("glue"), settings)
    topic = clients.client("sns").create_topic(Name=settings.sns_topic)["TopicArn"]
    resources = {
        "bucket": settings.bucket,
        "stream": settings.stream_name,
        "delivery_stream": settings.delivery_stream,
        "glue_database": settings.glue_database,
        "sns_topic": topic,
    }
    if "ssm-incidents" in clients.service_endpoints:
        incidents = clients.client("ssm-incidents")
        plans = {p["name"]: p["arn"] for p in incidents.list_response_plans()["responsePlanSummaries"]}
        resources["response_plan"] = plans.get("forewarn") or incidents.create_response_plan(
            name="forewarn", displayName="forewarn deviations",
            incidentTemplate={"title": "forewarn: a metric left its forecast", "impact": 3},
        )["arn"]
    return resources


# --------------------------------------------------------------------------------------------
# Kinesis -> Firehose
# --------------------------------------------------------------------------------------------


class Forwarder(threading.Thread):
    """Reads every shard of the stream from the start and puts the records on the delivery
    stream, as Firehose's Kinesis source does. Follows resharding: closed shards are drained,
    child shards picked up."""

    BATCH_RECORDS = 500
    BATCH_BYTES = 4 * 1024 * 1024

    def __init__(self, clients: AwsClients, settings: Settings, poll: float = 0.2):
        super().__init__(name="kinesis-to-firehose", daemon=True)
        self.kinesis = clients.client("kinesis")
        self.firehose = clients.client("firehose")
        self.settings = settings
        self.poll = poll
        self.stopping = threading.Event()
        self.forwarded = 0
        self.iterators: dict[str, str | None] = {}
        self.finished: set[str] = set()
        self.closed: set[str] = set()

    def refresh_shards(self) -> None:
        shards = self.kinesis.list_shards(StreamName=self.settings.stream_name)["Shards"]
        self.closed = {s["ShardId"] for s in shards if "EndingSequenceNumber" in s["SequenceNumberRange"]}
        for shard in shards:
            sid = shard["ShardId"]
            if sid in self.iterators or sid in self.finished:
                continue
            parent = shard.get("ParentShardId")
            if parent and parent in self.iterators:
                continue  # read the parent to its end first: order per key is kept
            self.iterators[sid] = self.kinesis.get_shard_iterator(
                StreamName=self.settings.stream_name, ShardId=sid, ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]

    def step(self) -> int:
        """One pass over the shards; returns how many records it forwarded."""
        moved = 0
        for sid, iterator in list(self.iterators.items()):
            if iterator is None:
                continue
            response = self.kinesis.get_records(ShardIterator=iterator, Limit=1000)
            records = response["Records"]
            if records:
                self.deliver([r["Data"] for r in records])
                moved += len(records)
            next_iterator = response.get("NextShardIterator")
            # AWS ends a closed shard with no next iterator; moto keeps giving one, so a closed
            # shard that returns nothing more is finished too.
            if next_iterator is None or (not records and sid in self.closed):
                del self.iterators[sid]
                self.finished.add(sid)
            else:
                self.iterators[sid] = next_iterator
        self.forwarded += moved
        return moved

    def deliver(self, payloads: list[bytes]) -> None:
        batch: list[dict[str, bytes]] = []
        size = 0
        for data in payloads:
            if batch and (len(batch) == self.BATCH_RECORDS or size + len(data) > self.BATCH_BYTES):
                self._put(batch)
                batch, size = [], 0
            batch.append({"Data": data})
            size += len(data)
        if batch:
            self._put(batch)

    def _put(self, batch: list[dict[str, bytes]]) -> None:
        pending = batch
        for attempt in range(8):
            response = self.firehose.put_record_batch(DeliveryStreamName=self.settings.delivery_stream, Records=pending)
            if not response.get("FailedPutCount"):
                return
            pending = [r for r, res in zip(pending, response["RequestResponses"], strict=True) if "ErrorCode" in res]
            time.sleep(0.1 * 2**attempt)
        raise StackError(f"Firehose kept refusing {len(pending)} records")

    def run(self) -> None:
        last_refresh = 0.0
        while not self.stopping.is_set():
            try:
                if time.monotonic() - last_refresh > 2.0 or not self.iterators:
                    self.refresh_shards()
                    last_refresh = time.monotonic()
                if not self.step():
                    self.stopping.wait(self.poll)
            except Exception:  # keep forwarding: the next pass retries from the same iterators
                log.exception("forwarder pass failed; retrying")
                self.stopping.wait(1.0)


# --------------------------------------------------------------------------------------------
# Process lifecycle
# --------------------------------------------------------------------------------------------


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def read_state(home: Path | None = None) -> dict[str, Any] | None:
    path = state_path(home)
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    if not _is_our_process(state.get("pid", -1)):
        path.unlink(missing_ok=True)  # left by a process that died
        return None
    return state


def _is_our_process(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"forewarn.local.stack" in cmdline


def serve(port: int, home: Path, settings: Settings) -> None:
    """Run the stack in this process until SIGTERM or SIGINT."""
    from moto.server import ThreadedMotoServer

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    from forewarn.local.incidents import IncidentManagerServer
    from forewarn.local.webhooks import WebhookServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    incidents = IncidentManagerServer(port + 1).start()
    webhooks = WebhookServer(port + 2).start()
    clients = local_clients(port)
    resources = bootstrap(clients, settings)
    forwarder = Forwarder(clients, settings)
    forwarder.start()
    state = {"pid": os.getpid(), "port": port, "endpoint": endpoint(port), "incidents_endpoint": incidents.endpoint,
             "webhooks_endpoint": webhooks.endpoint,
             "resources": resources, "started": time.time()}
    path = state_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)
    log.info("stack ready on %s", endpoint(port))
    stats = path.parent / "forwarder.json"
    try:
        while not stop.wait(0.5):
            stats.write_text(json.dumps({"forwarded": forwarder.forwarded}))
    finally:
        forwarder.stopping.set()
        forwarder.join(timeout=5)
        webhooks.stop()
        incidents.stop()
        server.stop()
        path.unlink(missing_ok=True)
        stats.unlink(missing_ok=True)


def attach(endpoint_url: str, settings: Settings) -> None:
    """Bootstrap the resources on a moto server run elsewhere (docker compose) and forward
    Kinesis to Firehose in the foreground until SIGTERM or SIGINT."""
    from forewarn.aws import AwsClients

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    clients = AwsClients.from_connection_json(connection_json(endpoint_url))
    deadline = time.monotonic() + 120
    while True:
        try:
            resources = bootstrap(clients, settings)
            break
        except Exception as err:  # the server may still be starting
            if time.monotonic() > deadline:
                raise StackError(f"no AWS endpoint answered at {endpoint_url}: {err}") from err
            time.sleep(1)
    log.info("resources ready on %s: %s", endpoint_url, resources)
    forwarder = Forwarder(clients, settings)
    forwarder.start()
    stop.wait()
    forwarder.stopping.set()
    forwarder.join(timeout=5)


def forwarded_count(home: Path | None = None) -> int:
    stats = state_path(home).parent / "forwarder.json"
    try:
        return int(json.loads(stats.read_text())["forwarded"])
    except (OSError, ValueError, KeyError):
        return 0


def up(port: int = DEFAULT_PORT, home: Path | None = None, timeout: float = 60.0) -> dict[str, Any]:
    """Start the stack (or return the running one) and wait until its resources exist."""
    home = home or home_dir()
    running = read_state(home)
    if running:
        if running["port"] != port:
            raise StackError(
                f"a stack is already running on port {running['port']} (pid {running['pid']}); "
                "use it, or stop it first with `forewarn stack down`."
            )
        return running
    for needed in (port, port + 1, port + 2):
        if not port_free(needed):
            raise StackError(
                f"port {needed} on 127.0.0.1 is in use by another program (the stack needs {port} to {port + 2}): "
                f"choose another with `forewarn stack up --port N` or FOREWARN_STACK_PORT, or stop what holds it."
            )
    log_path = home / "stack" / "stack.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "forewarn.local.stack", "serve", "--port", str(port), "--home", str(home)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            raise StackError("the stack exited while starting:\n  " + "\n  ".join(tail))
        state = read_state(home)
        if state and state["pid"] == proc.pid:
            return state
        time.sleep(0.1)
    _terminate(proc.pid)
    raise StackError(f"the stack did not become ready within {timeout:.0f} s; see {log_path}")


def down(home: Path | None = None, timeout: float = 15.0) -> bool:
    """Stop the running stack; False when none was running."""
    state = read_state(home)
    if not state:
        return False
    _terminate(state["pid"], timeout)
    state_path(home).unlink(missing_ok=True)
    return True


def _terminate(pid: int, timeout: float = 15.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _is_our_process(pid):
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m forewarn.local.stack")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--home", type=Path, default=home_dir())
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(args.port, args.home, Settings.load({"engine": "duckdb"}))


if __name__ == "__main__":
    main()
