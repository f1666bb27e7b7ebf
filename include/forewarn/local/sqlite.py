"""Connection arguments for Airflow's SQLite metadata database when it runs locally.

Airflow standalone's scheduler, API server and task processes share one SQLite file; with
SQLite's default 5-second busy timeout a burst of writes (a backfill creating its runs while
tasks report their states) fails with "database is locked". A longer timeout makes them wait
their turn. Used through ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS``; never on AWS.
"""

CONNECT_ARGS = {"timeout": 60}
CONNECT_ARGS_ASYNC = {"timeout": 60}
