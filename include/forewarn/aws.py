"""AWS clients for forewarn, from an Airflow connection.

Inside Airflow they come from the connection id in the settings (``aws_default``) through the
Amazon provider's hook; the command line reads the same connection from its environment variable
``AIRFLOW_CONN_<ID>`` (JSON form) without importing Airflow. An ``endpoint_url`` in the
connection's extra is the only thing that sends everything to the embedded stack instead of AWS.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import boto3
from botocore.config import Config

#: Adaptive retries absorb throttling on every call forewarn makes: its boto3 clients, the s3fs
#: filesystem DuckDB and pyarrow read through, and the Athena hook.
RETRY_SETTINGS: dict[str, Any] = {"retries": {"mode": "adaptive", "max_attempts": 10}, "connect_timeout": 10, "read_timeout": 60}
RETRY_CONFIG = Config(**RETRY_SETTINGS)

#: Services whose requests forewarn builds and checks itself: botocore's own check of every
#: field is skipped (``publish.put_metrics`` checks each point's value, time and the call's limits;
#: validating 1,000 points took a third of the client's time for a PutMetricData call).
UNVALIDATED = {"cloudwatch"}


@dataclass
class AwsClients:
    session: boto3.Session
    endpoint_url: str | None = None
    #: Per-service endpoints (the connection extra's ``service_config``, as the Amazon provider reads it).
    service_endpoints: dict[str, str] = field(default_factory=dict)

    @property
    def region(self) -> str:
        return self.session.region_name or "us-east-1"

    def client(self, service: str) -> Any:
        endpoint = self.service_endpoints.get(service, self.endpoint_url)
        config = RETRY_CONFIG.merge(Config(parameter_validation=False)) if service in UNVALIDATED else RETRY_CONFIG
        return self.session.client(service, endpoint_url=endpoint, region_name=self.region, config=config)

    @cached_property
    def s3(self) -> Any:
        return self.client("s3")

    def filesystem(self) -> Any:
        """An s3fs filesystem with the same credentials and endpoint (for DuckDB and pyarrow)."""
        import s3fs

        creds = self.session.get_credentials()
        frozen = creds.get_frozen_credentials() if creds else None
        return s3fs.S3FileSystem(
            key=frozen.access_key if frozen else None,
            secret=frozen.secret_key if frozen else None,
            token=frozen.token if frozen else None,
            endpoint_url=self.endpoint_url,
            client_kwargs={"region_name": self.region},
            config_kwargs=RETRY_SETTINGS,
            skip_instance_cache=True,
        )

    @classmethod
    def from_airflow(cls, conn_id: str) -> AwsClients:
        """Clients for an Airflow connection, resolved by the Amazon provider (secrets backends,
        role assumption and all)."""
        from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

        hook = AwsBaseHook(aws_conn_id=conn_id, client_type="s3")
        session = hook.get_session(region_name=hook.conn_region_name)
        services = {name: cfg["endpoint_url"] for name, cfg in (hook.conn_config.service_config or {}).items() if cfg.get("endpoint_url")}
        return cls(session=session, endpoint_url=hook.conn_config.endpoint_url, service_endpoints=services)

    @classmethod
    def from_environment(cls, conn_id: str = "aws_default", environ: dict[str, str] | None = None) -> AwsClients:
        """Clients for the command line: the connection's ``AIRFLOW_CONN_<ID>`` JSON if set, else the
        standard AWS credential chain."""
        env = os.environ if environ is None else environ
        raw = env.get(f"AIRFLOW_CONN_{conn_id.upper()}")
        if not raw:
            return cls(session=boto3.Session())
        return cls.from_connection_json(raw)

    @classmethod
    def from_connection_json(cls, raw: str) -> AwsClients:
        try:
            conn = json.loads(raw)
        except json.JSONDecodeError:
            raise ValueError(
                "the AWS connection must be in Airflow's JSON form, e.g. "
                '{"conn_type":"aws","login":"KEY","password":"SECRET","extra":{"region_name":"us-east-1"}}'
            ) from None
        extra = conn.get("extra") or {}
        if isinstance(extra, str):
            extra = json.loads(extra)
        session = boto3.Session(
            aws_access_key_id=conn.get("login") or None,
            aws_secret_access_key=conn.get("password") or None,
            region_name=extra.get("region_name") or "us-east-1",
        )
        services = {name: cfg["endpoint_url"] for name, cfg in (extra.get("service_config") or {}).items() if cfg.get("endpoint_url")}
        return cls(session=session, endpoint_url=extra.get("endpoint_url"), service_endpoints=services)


def connection_json(endpoint_url: str, region: str = "us-east-1", incidents_url: str | None = None) -> str:
    """The ``AIRFLOW_CONN_AWS_DEFAULT`` value that points every AWS hook at an endpoint (and
    Incident Manager at its own, when given)."""
    extra: dict = {"region_name": region, "endpoint_url": endpoint_url}
    if incidents_url:
        extra["service_config"] = {"ssm-incidents": {"endpoint_url": incidents_url}}
    return json.dumps(
        {
            "conn_type": "aws",
            "login": "testing",
            "password": "testing",  # noqa: S105 - moto accepts any key; no real credential
            "extra": extra,
        }
    )


def glue_location(glue: Any, database: str, table: str) -> str:
    """A table's S3 location from the Glue catalog, with a message that says what to do."""
    try:
        found = glue.get_table(DatabaseName=database, Name=table)
    except glue.exceptions.EntityNotFoundException:
        raise LookupError(
            f"Glue table {database}.{table} does not exist: deploy infra/ (AWS) or run "
            "`forewarn stack up` (local), or set FOREWARN_GLUE_DATABASE / FOREWARN_RAW_TABLE."
        ) from None
    return found["Table"]["StorageDescriptor"]["Location"]
