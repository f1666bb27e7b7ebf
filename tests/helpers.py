"""Shared helpers for tests that need their own resources on the embedded stack."""

from __future__ import annotations

import itertools

from forewarn.config import Settings

_counter = itertools.count()


def fresh_settings(clients, **changes) -> Settings:
    """Settings on their own bucket, stream and Glue database, bootstrapped on the stack."""
    from forewarn.local.stack import bootstrap

    n = next(_counter)
    settings = Settings.load(
        {
            "engine": "duckdb",
            "bucket": f"forewarn-test-{n}",
            "stream_name": f"forewarn-test-{n}",
            "delivery_stream": f"forewarn-test-{n}",
            "glue_database": f"forewarn_test_{n}",
            "sns_topic": f"forewarn-test-{n}",
            **changes,
        }
    )
    bootstrap(clients, settings, shards=1)
    return settings


def list_keys(s3, bucket: str, prefix: str) -> list[str]:
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(o["Key"] for o in page.get("Contents", []))
    return sorted(keys)
