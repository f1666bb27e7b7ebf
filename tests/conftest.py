"""Test set-up: Airflow on a throw-away SQLite home (set before anything imports Airflow), and one
embedded AWS stack (moto server on a free loopback port) shared by the tests that need it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="forewarn-airflow-"))
os.environ.update(
    {
        "AIRFLOW_HOME": str(_AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
        "FOREWARN_ENGINE": "duckdb",
        "FOREWARN_SETTLE_MINUTES": "0",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",  # moto accepts anything; never a real credential
        "AWS_DEFAULT_REGION": "us-east-1",
    }
)
os.environ.pop("AWS_PROFILE", None)


def free_port() -> int:
    """A loopback port that is free, and whose next two ports are free too (the stack takes all three)."""
    from forewarn.local.stack import port_free

    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port < 65534 and port_free(port) and port_free(port + 1) and port_free(port + 2):
            return port
    raise RuntimeError("no three adjacent free ports on 127.0.0.1")


@pytest.fixture(scope="session")
def stack_home(tmp_path_factory):
    return tmp_path_factory.mktemp("stack-home")


@pytest.fixture(scope="session")
def aws_stack(stack_home):
    """The embedded stack, started once for the session and stopped at its end."""
    from forewarn.local import stack

    state = stack.up(port=free_port(), home=stack_home)
    os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = stack.local_connection(state["port"])
    try:
        yield state
    finally:
        stack.down(stack_home)
        os.environ.pop("AIRFLOW_CONN_AWS_DEFAULT", None)


@pytest.fixture(scope="session")
def clients(aws_stack):
    from forewarn.local.stack import local_clients

    return local_clients(aws_stack["port"])


@pytest.fixture(scope="session")
def airflow_db():
    """An Airflow metadata database, migrated once for the session."""
    subprocess.run(
        [str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
        check=True,
        capture_output=True,
        env=dict(os.environ),
    )
    return _AIRFLOW_HOME


# --------------------------------------------------------------------------------------------
# Every AWS operation the deployed code makes, recorded while the suite runs, for the IAM policy
# test (tests/test_zz_policy.py runs last). Calls made by the embedded stack, the producer,
# evaluations and the tests themselves are not the DAGs' and are not recorded.
# --------------------------------------------------------------------------------------------

AWS_CALLS: set[tuple[str, str]] = set()
_PACKAGE = ROOT / "include" / "forewarn"
_NOT_DEPLOYED = ("local", "producer.py", "synth.py", "eval_m4.py", "eval_nab.py", "catalog.py", "cli.py")


def _install_recorder() -> None:
    import inspect

    from botocore.client import BaseClient

    original = BaseClient._make_api_call
    if getattr(original, "_forewarn_recorder", False):
        return

    def recording(self, operation_name, api_params):
        for frame in inspect.stack(context=0)[1:]:
            path = Path(frame.filename)
            if _PACKAGE in path.parents:
                rel = path.relative_to(_PACKAGE)
                if rel.parts[0] not in _NOT_DEPLOYED:
                    AWS_CALLS.add((self.meta.service_model.service_name, operation_name))
                break
        return original(self, operation_name, api_params)

    recording._forewarn_recorder = True
    BaseClient._make_api_call = recording


_install_recorder()
