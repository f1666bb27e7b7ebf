"""Reading an interval's events straight from the Kinesis stream, with per-shard checkpoints in
S3 keyed by interval.

A run for ``[start, end)`` reads every shard from the checkpoint ``state/kinesis/<start>.json``
(the first time, from ``start`` minus an hour) up to the records that arrived before ``horizon``
(the interval's end plus the late-data delay), and checkpoints, as ``state/kinesis/<end>.json``,
the last record that arrived before ``end``: the records that arrived while it waited for late
data are read again by the next interval, whose first minutes they carry. Bounded by arrival time
on both sides, a rerun reads the same records. Closed shards are read to their end and their children picked
up (resharding); an expired iterator is renewed after the last record read. A shard is read
until the stream says it has caught up (``MillisBehindLatest`` 0): an empty page alone is not
the end.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa

from forewarn.layout import checkpoint_key

log = logging.getLogger(__name__)


class KinesisReader:
    def __init__(self, kinesis: Any, stream: str, page_limit: int = 1000, max_empty_pages: int = 100):
        self.kinesis = kinesis
        self.max_empty_pages = max_empty_pages
        self.stream = stream
        self.page_limit = page_limit
        self.renewed = 0
        self.shards_read = 0

    def _iterator(self, shard: str, after: str | None, since: datetime) -> str:
        if after:
            kwargs = {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "StartingSequenceNumber": after}
        else:
            kwargs = {"ShardIteratorType": "AT_TIMESTAMP", "Timestamp": since}
        return self.kinesis.get_shard_iterator(StreamName=self.stream, ShardId=shard, **kwargs)["ShardIterator"]

    def read(self, positions: dict[str, str], since: datetime, horizon: datetime,
             checkpoint_before: datetime | None = None) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """Records that arrived before ``horizon``, after ``positions`` (shard -> last sequence
        number read); returns them and the positions of the last records that arrived before
        ``checkpoint_before`` (default: ``horizon``), where the next read resumes."""
        checkpoint_before = checkpoint_before or horizon
        shards = self.kinesis.list_shards(StreamName=self.stream)["Shards"]
        self.shards_read = len(shards)
        records: list[dict[str, Any]] = []
        new_positions = dict(positions)
        for shard in shards:
            sid = shard["ShardId"]
            iterator = self._iterator(sid, positions.get(sid), since)
            last = checkpoint = positions.get(sid)
            empty = 0
            while iterator:
                try:
                    response = self.kinesis.get_records(ShardIterator=iterator, Limit=self.page_limit)
                except self.kinesis.exceptions.ExpiredIteratorException:
                    self.renewed += 1
                    iterator = self._iterator(sid, last, since)
                    continue
                batch = response["Records"]
                done = False
                for record in batch:
                    if record["ApproximateArrivalTimestamp"] >= horizon:
                        done = True
                        break
                    records.append({"shard": sid, "sequence": record["SequenceNumber"], "data": record["Data"],
                                    "arrival": record["ApproximateArrivalTimestamp"]})
                    last = record["SequenceNumber"]
                    if record["ApproximateArrivalTimestamp"] < checkpoint_before:
                        checkpoint = last
                if done:
                    break  # past the horizon
                if not batch:
                    # an empty page is no proof of the end: the stream says how far behind this is
                    empty += 1
                    if response.get("MillisBehindLatest", 0) == 0 or empty > self.max_empty_pages:
                        if empty > self.max_empty_pages:
                            log.warning("shard %s still %s ms behind after %d empty pages", sid, response.get("MillisBehindLatest"), empty)
                        break  # caught up
                else:
                    empty = 0
                iterator = response.get("NextShardIterator")  # None: a closed shard's end
            if checkpoint:
                new_positions[sid] = checkpoint
        return records, new_positions


def read_interval(kinesis: Any, s3: Any, bucket: str, stream: str, state_prefix: str, start: datetime, end: datetime,
                  horizon: datetime) -> tuple[pa.Table, dict[str, Any]]:
    """The interval's records as ``raw_lines`` (source_key, arrival_hour, line) for the
    aggregation SQL, and what was read."""
    try:
        positions = json.loads(s3.get_object(Bucket=bucket, Key=checkpoint_key(state_prefix, start))["Body"].read())
        resumed = True
    except s3.exceptions.NoSuchKey:
        positions, resumed = {}, False
    reader = KinesisReader(kinesis, stream)
    records, new_positions = reader.read(positions, start - timedelta(hours=1), horizon, checkpoint_before=end)
    s3.put_object(Bucket=bucket, Key=checkpoint_key(state_prefix, end), Body=json.dumps(new_positions, sort_keys=True).encode())
    keys, hours, lines = [], [], []
    for r in records:
        text = r["data"].decode("utf-8", errors="replace")
        for line in text.split("\n"):
            keys.append(f"kinesis://{stream}/{r['shard']}/{r['sequence']}")
            hours.append(r["arrival"].strftime("%Y/%m/%d/%H"))
            lines.append(line)
    table = pa.table({"source_key": pa.array(keys, pa.string()), "arrival_hour": pa.array(hours, pa.string()),
                      "line": pa.array(lines, pa.string())})
    info = {"records": len(records), "shards": reader.shards_read, "resumed_from_checkpoint": resumed,
            "iterators_renewed": reader.renewed}
    return table, info
