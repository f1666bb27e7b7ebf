"""Sending events: to Kinesis with PutRecords (the live path), or straight into the landing layout
(the bulk history loader, so a demo or a backfill needs no real-time wait)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)

#: Kinesis PutRecords limits: 500 records and 5 MiB a call, 1 MiB a record (data + key).
MAX_RECORDS_PER_CALL = 500
MAX_BYTES_PER_CALL = 5 * 1024 * 1024
MAX_RECORD_BYTES = 1024 * 1024
RETRYABLE = ("ProvisionedThroughputExceededException", "InternalFailure", "ServiceUnavailable", "ThrottlingException")


class SendError(RuntimeError):
    """Records could not be delivered after every retry; none of the others were lost."""


def batches(records: Sequence[tuple[bytes, str]]) -> Iterable[list[tuple[bytes, str]]]:
    """Split (data, partition key) pairs into PutRecords calls within the service limits."""
    batch: list[tuple[bytes, str]] = []
    size = 0
    for data, key in records:
        record_size = len(data) + len(key.encode())
        if record_size > MAX_RECORD_BYTES:
            raise ValueError(f"a record of {record_size} bytes exceeds Kinesis' 1 MiB limit")
        if batch and (len(batch) == MAX_RECORDS_PER_CALL or size + record_size > MAX_BYTES_PER_CALL):
            yield batch
            batch, size = [], 0
        batch.append((data, key))
        size += record_size
    if batch:
        yield batch


def put_records(
    kinesis: Any,
    stream: str,
    records: Sequence[tuple[bytes, str]],
    max_attempts: int = 8,
    base_delay: float = 0.1,
    sleep: Callable[[float], None] = time.sleep,
    progress: Callable[[int], None] | None = None,
) -> int:
    """PutRecords in batches, re-sending only the records that failed (throttling, internal
    errors) with jittered exponential back-off. Returns the number of records delivered."""
    sent = 0
    for batch in batches(records):
        pending = batch
        for attempt in range(1, max_attempts + 1):
            response = kinesis.put_records(
                StreamName=stream, Records=[{"Data": d, "PartitionKey": k} for d, k in pending]
            )
            if not response.get("FailedRecordCount"):
                break
            failed = []
            for record, result in zip(pending, response["Records"], strict=True):
                if "ErrorCode" in result:
                    if result["ErrorCode"] not in RETRYABLE:
                        raise SendError(f"Kinesis refused a record: {result['ErrorCode']}: {result.get('ErrorMessage')}")
                    failed.append(record)
            sent += len(pending) - len(failed)
            pending = failed
            if attempt == max_attempts:
                raise SendError(
                    f"{len(pending)} records still failing after {max_attempts} attempts "
                    f"(throttled: raise the stream's shard count or slow the producer); {sent} were delivered"
                )
            sleep(random.uniform(0, base_delay * 2 ** (attempt - 1)))  # noqa: S311 - jitter, not crypto
        sent += len(pending)
        if progress:
            progress(sent)
    return sent


def send_plan(kinesis: Any, stream: str, plan: pd.DataFrame, progress: Callable[[int], None] | None = None) -> int:
    """Send a landing plan's lines in arrival order; the event id is the partition key."""
    records = [(line.encode() + b"\n", str(key)) for line, key in zip(plan["line"], plan["event_id"], strict=True)]
    return put_records(kinesis, stream, records, progress=progress)


def write_landing(
    s3: Any, bucket: str, raw_prefix: str, plan: pd.DataFrame, name: str = "forewarn-history",
    progress: Callable[[int, int], None] | None = None, object_seconds: int = 3600,
) -> list[str]:
    """Write a plan's lines straight into the Firehose layout ``raw/YYYY/MM/DD/HH/`` by arrival
    hour, one object per ``object_seconds`` of arrivals (an hour; Firehose's buffer, 60 to 900 s,
    to land as it does), named as Firehose names them. Deterministic: a reload overwrites."""
    if not 1 <= object_seconds <= 3600 or 3600 % object_seconds:
        raise ValueError(f"object_seconds={object_seconds} must divide an hour")
    hours = (plan["arrival_epoch"] // object_seconds * object_seconds).astype("int64")
    keys = []
    groups = list(plan.groupby(hours, sort=True))
    for i, (hour, part) in enumerate(groups, start=1):
        moment = datetime.fromtimestamp(int(hour), tz=UTC)
        key = f"{raw_prefix}{moment:%Y/%m/%d/%H}/{name}-1-{moment:%Y-%m-%d-%H-%M-%S}-bulk"
        body = ("\n".join(part["line"]) + "\n").encode()
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        keys.append(key)
        if progress:
            progress(i, len(groups))
    return keys
