"""
## forewarn_maintenance

Declare a maintenance window from the Airflow UI (**Trigger DAG** with the form below; who may
trigger it is who may edit forewarn's DAGs) or any tool that triggers a run: the series whose
names match `series` are expected to misbehave then (a deploy, a batch, a planned outage).
Alerts that begin inside a window are recorded but not sent, an open incident sends no updates
(its resolution still goes out), and the window's buckets are kept out of training. It writes
one object to `s3://BUCKET/maintenance/` — the same thing `forewarn maintenance` writes; any JSON
object there with the same fields works too.

| kind | give | example |
|---|---|---|
| one-off | `from`, `to` | a database upgrade, 02:00–03:00 UTC |
| recurring (RFC 5545) | `rrule`, `duration_minutes`, `tz` | `FREQ=WEEKLY;BYDAY=SU;BYHOUR=3;BYMINUTE=0`, 90, `Europe/Berlin` |
| recurring (cron) | `cron`, `duration_minutes`, `tz` | `0 4 * * *`, 20, `America/New_York` |

A recurring window keeps its local time across daylight-saving changes; `from`/`to` then bound
the recurrence (optional). The triggering user is recorded in the note. The same window twice is
one object. To silence one series for a while from now, use **forewarn_snooze**.

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
        "series": Param(
            "", type="string", minLength=1, maxLength=200,
            description="Which series: a shell-style pattern over series names ('payments.*', 'orders.count', '*').",
        ),
        "from": Param(
            None, type=["null", "string"], format="date-time",
            description="One-off: when the window begins (ISO 8601). Recurring: the first day it applies (optional).",
        ),
        "to": Param(
            None, type=["null", "string"], format="date-time",
            description="One-off: when the window ends. Recurring: the last day it applies (optional).",
        ),
        "rrule": Param(
            None, type=["null", "string"], maxLength=500,
            description="Recurring: an RFC 5545 rule, e.g. FREQ=WEEKLY;BYDAY=SU;BYHOUR=3;BYMINUTE=0 (or give cron).",
        ),
        "cron": Param(
            None, type=["null", "string"], maxLength=100,
            description="Recurring: a five-field cron expression, e.g. 0 4 * * * (or give rrule).",
        ),
        "duration_minutes": Param(
            None, type=["null", "number"], minimum=1, maximum=10080,
            description="Recurring: how long each occurrence lasts, in minutes.",
        ),
        "tz": Param(
            "UTC", type="string", maxLength=64,
            description="Recurring: the IANA time zone its times are in (e.g. Europe/Berlin), so it keeps local time across DST.",
        ),
        "note": Param("", type="string", maxLength=1000, description="Why, for whoever looks at the series next."),
    },
)
def forewarn_maintenance():
    @task
    def write_window(params=None, dag_run=None) -> dict:
        """Validate the window (an error names the field) and write it."""
        from forewarn.tasks import settings_for_run, window_from_params

        by = getattr(dag_run, "triggering_user_name", None) or "airflow"
        return window_from_params(settings_for_run(), params or {}, by=by)

    write_window()


forewarn_maintenance()
