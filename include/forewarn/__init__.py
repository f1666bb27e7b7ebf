"""forewarn: forecast-based anomaly detection for streaming metrics, as Apache Airflow 3 DAGs."""

__version__ = "0.1.0"
