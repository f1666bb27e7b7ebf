"""docker-compose.yaml, airflow_settings.yaml and requirements.txt say only true things: every
file, command and port they name exists, and no real secret is in them."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import yaml

from forewarn.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
MOUNT = "/opt/airflow/project"


def services():
    return COMPOSE["services"]


def env_of(service):
    return {str(k): str(v) for k, v in (service.get("environment") or {}).items()}


def test_compose_mounts_existing_project_paths():
    for name, svc in services().items():
        for volume in svc.get("volumes", []):
            host, container = volume.split(":")[:2]
            assert (ROOT / host).resolve().exists(), f"{name} mounts missing {host}"
            assert container == MOUNT


def test_compose_folders_point_into_the_mounted_project():
    env = env_of(services()["airflow"])
    for key in ("AIRFLOW__CORE__DAGS_FOLDER", "AIRFLOW__CORE__PLUGINS_FOLDER"):
        assert env[key].startswith(MOUNT + "/")
        assert (ROOT / env[key][len(MOUNT) + 1 :]).is_dir(), key


def test_compose_uses_airflow_3_3_1_and_publishes_ports_on_loopback_only():
    for name, svc in services().items():
        if "airflow" in svc["image"]:
            assert svc["image"].startswith("apache/airflow:3.3.1"), name
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    assert services()["airflow"]["ports"] == ["127.0.0.1:8080:8080"]


def test_compose_commands_are_real_commands():
    parser = build_parser()
    for name, svc in services().items():
        command = svc.get("command")
        if not command:
            continue
        argv = command if isinstance(command, list) else shlex.split(command)
        if argv[:2] == ["bash", "-c"]:
            argv = shlex.split(argv[2])
        if argv[0] == "forewarn":
            parser.parse_args(argv[1:])  # exits on an unknown command or flag
        else:
            assert argv == ["standalone"], f"{name}: unexpected command {argv}"


def test_compose_connection_points_at_the_moto_service():
    for svc in services().values():
        raw = env_of(svc).get("AIRFLOW_CONN_AWS_DEFAULT")
        if raw:
            endpoint = json.loads(raw)["extra"]["endpoint_url"]
            host, port = re.match(r"http://([^:]+):(\d+)$", endpoint).groups()
            assert host in services()
            assert services()[host]["ports"][0].endswith(f":{port}")
    attach = services()["forwarder"]["command"][-1]
    assert "http://moto:5000" in attach


def test_airflow_settings_hold_only_local_fake_values():
    doc = yaml.safe_load((ROOT / "airflow_settings.yaml").read_text())["airflow"]
    (conn,) = doc["connections"]
    assert conn["conn_id"] == "aws_default" and conn["conn_login"] == "testing"
    assert conn["conn_extra"]["endpoint_url"].startswith("http://127.0.0.1:")
    for var in doc["variables"]:
        json.loads(var["variable_value"])


def test_no_secret_shaped_strings_in_the_repository():
    pattern = re.compile(r"(AKIA[0-9A-Z]{16}|aws_secret_access_key\s*=\s*[A-Za-z0-9/+]{40})")
    for path in ROOT.rglob("*"):
        if path.is_file() and not {".venv", ".git", ".forewarn"} & set(path.parts) and path.suffix in {".py", ".yaml", ".yml", ".md", ".txt", ".toml", ".json"}:
            assert not pattern.search(path.read_text(errors="ignore")), path


def test_mwaa_requirements_start_with_the_airflow_constraint_line():
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    assert lines[0] == '--constraint "https://raw.githubusercontent.com/apache/airflow/constraints-3.3.1/constraints-3.12.txt"'
    names = {re.split(r"[\[=<>]", line)[0] for line in lines[1:] if line and not line.startswith("#")}
    assert {"apache-airflow-providers-amazon", "statsmodels", "pandas", "pyarrow", "sqlglot", "s3fs"} <= names


def test_lock_pins_airflow_3_3_1_and_a_current_s3fs():
    lock = dict(
        line.split("==") for line in (ROOT / "requirements/lock-py311.txt").read_text().splitlines() if "==" in line
    )
    assert lock["apache-airflow"] == "3.3.1"
    assert int(lock["s3fs"].split(".")[0]) >= 2024  # never the 0.4 line that lacks aiobotocore
    assert "aiobotocore" in lock
