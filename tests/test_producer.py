"""PutRecords batching within Kinesis limits, retries of partial failures and throttling."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forewarn.producer import MAX_BYTES_PER_CALL, MAX_RECORDS_PER_CALL, SendError, batches, put_records


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 400_000), max_size=80), small=st.integers(0, 1300))
def test_batches_respect_the_limits_and_keep_every_record_in_order(sizes, small):
    records = [(b"x" * n, "k") for n in sizes] + [(b"y", "key")] * small
    out = list(batches(records))
    assert [r for b in out for r in b] == records
    for batch in out:
        assert 1 <= len(batch) <= MAX_RECORDS_PER_CALL
        assert sum(len(d) + len(k) for d, k in batch) <= MAX_BYTES_PER_CALL


def test_a_record_over_one_mib_is_refused_before_sending():
    with pytest.raises(ValueError, match="1 MiB"):
        list(batches([(b"x" * (1024 * 1024), "k")]))


class FlakyKinesis:
    """Fails the first ``failures`` attempts of each record with a throttling error."""

    def __init__(self, failures: int, code: str = "ProvisionedThroughputExceededException"):
        self.failures = failures
        self.code = code
        self.attempts: dict[bytes, int] = {}
        self.delivered: list[bytes] = []
        self.calls = 0

    def put_records(self, StreamName, Records):  # noqa: N803 - boto3's names
        self.calls += 1
        results = []
        failed = 0
        for r in Records:
            n = self.attempts.get(r["Data"], 0) + 1
            self.attempts[r["Data"]] = n
            if n <= self.failures and int(r["Data"][1:]) % 3 == 0:
                results.append({"ErrorCode": self.code, "ErrorMessage": "slow down"})
                failed += 1
            else:
                self.delivered.append(r["Data"])
                results.append({"SequenceNumber": "1", "ShardId": "shardId-0"})
        return {"FailedRecordCount": failed, "Records": results}


def test_partial_failures_are_resent_until_delivered_exactly_once():
    kinesis = FlakyKinesis(failures=2)
    records = [(f"r{i}".encode(), str(i)) for i in range(1200)]
    sleeps = []
    sent = put_records(kinesis, "s", records, sleep=sleeps.append)
    assert sent == 1200
    assert sorted(kinesis.delivered) == sorted(d for d, _ in records)
    assert len(sleeps) >= 2 and all(s >= 0 for s in sleeps)


def test_persistent_throttling_raises_with_what_to_do():
    kinesis = FlakyKinesis(failures=100)
    with pytest.raises(SendError, match="shard count"):
        put_records(kinesis, "s", [(f"r{i}".encode(), "k") for i in range(10)], max_attempts=3, sleep=lambda s: None)


def test_a_non_retryable_error_is_not_retried():
    kinesis = FlakyKinesis(failures=1, code="AccessDeniedException")
    with pytest.raises(SendError, match="AccessDenied"):
        put_records(kinesis, "s", [(b"r0", "k")], sleep=lambda s: None)
    assert kinesis.calls == 1
