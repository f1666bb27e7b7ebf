"""
## forewarn_snooze

Snooze a series from the Airflow UI (**Trigger DAG** with the form below; who may trigger it is
who may edit forewarn's DAGs): for `minutes` from the moment of the run (its logical date), its
open incident sends no updates (its resolution still goes out) and new alerts on it are
recorded, not sent. `target` is the series, or the episode as every notification and the
forewarn page name it (`series|YYYY-MM-DDTHH:MM`). It writes a one-off window over that series
to `s3://BUCKET/maintenance/` — what `forewarn snooze` writes; the note records who snoozed it.
Snoozed buckets are kept out of training as a window's are.

**Reads:** connection `aws_default`; Variable `forewarn_config` (optional).
**Writes:** `s3://BUCKET/maintenance/<hash>.json`.
**IAM:** s3:PutObject.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, task


@dag(
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    doc_md=__doc__,
    tags=["forewarn", "feedback"],
    default_args={
        "owner": "forewarn",
        "retries": 2,
        "retry_delay": timedelta(seconds=30),
        "execution_timeout": timedelta(minutes=5),
    },
    params={
        "target": Param(
            "", type="string", minLength=1, maxLength=200,
            description="The series, or the episode as the incident names it (series|YYYY-MM-DDTHH:MM).",
        ),
        "minutes": Param(60, type="integer", minimum=1, maximum=10080, description="For how long, in minutes (at most a week)."),
        "note": Param("", type="string", maxLength=1000, description="Why, for whoever reads the incident next."),
    },
)
def forewarn_snooze():
    @task
    def write_snooze(params=None, dag_run=None) -> dict:
        """Validate the snooze (an error names the field) and write it, from the run's logical date."""
        from datetime import UTC
        from datetime import datetime as clock

        from forewarn.tasks import settings_for_run, snooze_from_params

        by = getattr(dag_run, "triggering_user_name", None) or "airflow"
        now = getattr(dag_run, "logical_date", None) or getattr(dag_run, "run_after", None) or clock.now(UTC)
        return snooze_from_params(settings_for_run(), params or {}, by=by, now=now)

    write_snooze()


forewarn_snooze()
