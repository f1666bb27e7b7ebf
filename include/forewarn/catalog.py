"""Glue table definitions for the landing zone and the aggregates (Athena reads them; so does the
local DuckDB engine, for their locations). Partition projection means no crawler and no
``MSCK REPAIR``: Athena computes the partitions from the key layout."""

from __future__ import annotations

from typing import Any

from forewarn.config import Settings


def raw_table_input(settings: Settings) -> dict[str, Any]:
    """One string column per landed line; ``arrival_hour`` is Firehose's ``YYYY/MM/DD/HH`` prefix."""
    location = settings.s3_uri(settings.raw_prefix)
    return {
        "Name": settings.raw_table,
        "Description": "Events as Firehose landed them: one JSON line per row, by arrival hour (UTC).",
        "TableType": "EXTERNAL_TABLE",
        "Parameters": {
            "classification": "text",
            "projection.enabled": "true",
            "projection.arrival_hour.type": "date",
            "projection.arrival_hour.format": "yyyy/MM/dd/HH",
            "projection.arrival_hour.range": "NOW-400DAYS,NOW+1HOURS",
            "projection.arrival_hour.interval": "1",
            "projection.arrival_hour.interval.unit": "HOURS",
            "storage.location.template": location + "${arrival_hour}/",
        },
        "PartitionKeys": [{"Name": "arrival_hour", "Type": "string"}],
        "StorageDescriptor": {
            "Columns": [{"Name": "line", "Type": "string"}],
            "Location": location,
            "InputFormat": "org.apache.hadoop.mapred.TextInputFormat",
            "OutputFormat": "org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat",
            "SerdeInfo": {
                "SerializationLibrary": "org.apache.hadoop.hive.serde2.lazy.LazySimpleSerDe",
                # A delimiter that never occurs in JSON text keeps each line whole.
                "Parameters": {"field.delim": "\u0001", "serialization.format": "\u0001"},
            },
        },
    }


def aggregates_table_input(settings: Settings) -> dict[str, Any]:
    location = settings.s3_uri(settings.aggregates_prefix)
    return {
        "Name": settings.aggregates_table,
        "Description": "One row per series x bucket: count, sum, mean, stddev, p95 of event values.",
        "TableType": "EXTERNAL_TABLE",
        "Parameters": {
            "classification": "parquet",
            "projection.enabled": "true",
            "projection.dt.type": "date",
            "projection.dt.format": "yyyy-MM-dd",
            "projection.dt.range": "NOW-400DAYS,NOW+1DAYS",
            "projection.hour.type": "integer",
            "projection.hour.range": "0,23",
            "projection.hour.digits": "2",
        },
        "PartitionKeys": [{"Name": "dt", "Type": "string"}, {"Name": "hour", "Type": "string"}],
        "StorageDescriptor": {
            "Columns": [
                {"Name": "series", "Type": "string"},
                {"Name": "bucket_start", "Type": "timestamp"},
                {"Name": "grain_seconds", "Type": "int"},
                {"Name": "event_count", "Type": "bigint"},
                {"Name": "value_sum", "Type": "double"},
                {"Name": "value_mean", "Type": "double"},
                {"Name": "value_stddev", "Type": "double"},
                {"Name": "value_p95", "Type": "double"},
            ],
            "Location": location,
            "InputFormat": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat",
            "OutputFormat": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat",
            "SerdeInfo": {"SerializationLibrary": "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"},
        },
    }


def ensure_tables(glue: Any, settings: Settings) -> None:
    """Create or update the database and both tables (idempotent)."""
    try:
        glue.create_database(DatabaseInput={"Name": settings.glue_database, "Description": "forewarn"})
    except glue.exceptions.AlreadyExistsException:
        pass
    for table in (raw_table_input(settings), aggregates_table_input(settings)):
        try:
            glue.create_table(DatabaseName=settings.glue_database, TableInput=table)
        except glue.exceptions.AlreadyExistsException:
            glue.update_table(DatabaseName=settings.glue_database, TableInput=table)
