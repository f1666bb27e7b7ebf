"""Operators' JSON documents in the bucket (labels, maintenance windows): one object each under a
prefix, read together; one that cannot be used is logged and set aside, never fatal (a bad
object must not stop training or a comparison)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def read_documents(s3: Any, bucket: str, prefix: str, parse: Callable[[Any, str], T], error: type[ValueError],
                   what: str) -> tuple[list[T], list[str]]:
    """Every object under ``prefix`` parsed by ``parse(doc, where)`` (8 fetched at a time), in key
    order, and the messages of those that were not JSON or that ``parse`` refused with ``error``."""
    keys = [obj["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for obj in page.get("Contents", [])]

    def one(key: str) -> tuple[T | None, str | None]:
        where = f"s3://{bucket}/{key}"
        try:
            return parse(json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read()), where), None
        except error as err:
            return None, str(err)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            return None, f"{where}: not JSON ({err})"

    with ThreadPoolExecutor(max(1, min(8, len(keys)))) as pool:
        found = list(pool.map(one, keys))
    errors = [message for _, message in found if message is not None]
    for message in errors:
        log.warning("%s set aside: %s", what, message)
    return [doc for doc, message in found if message is None], errors
