"""
## forewarn_label

Say what an alert episode, or a stretch of a series, was — from the Airflow UI (**Trigger DAG**
with the form below; who may trigger it is who may edit forewarn's DAGs) or any tool that
triggers a run. It writes one label object to `s3://BUCKET/labels/` (the same thing
`forewarn label` writes; any JSON object there with the same fields works too).

| as | means | the comparison | training |
|---|---|---|---|
| `real` | a real anomaly | nothing changes | its buckets kept out |
| `not_anomaly` | a false alarm | an open incident is resolved with the note; the episode ends silently | learnt |
| `expected` | a planned deviation (a batch, a campaign) | as `not_anomaly` | learnt |
| `new_normal` | the level changed for good | as `not_anomaly` | the history before `from` moved to the new level |

An `expected` label with **recurs** (`daily`, `weekly`) says the planned deviation comes back
(a weekly batch): training keeps it and its recurrences out of the history and widens the band
over the next one to hold what the last one did, so it is not alerted again.

**target** is an episode as incidents name it (`series|YYYY-MM-DDTHH:MM`, the `episode` field of
every notification and of the forewarn page) or a series name with `from` (and optionally `to`).
A second label on the same span wins over the first.

**Reads:** connection `aws_default`; Variable `forewarn_config` (optional).
**Writes:** `s3://BUCKET/labels/<hash>.json` (the same label twice is one object).
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
            description="The episode (series|YYYY-MM-DDTHH:MM, as the incident names it) or a series name.",
        ),
        "as": Param(
            "not_anomaly", type="string", enum=["real", "not_anomaly", "expected", "new_normal"],
            description="What it was: real, not_anomaly (a false alarm), expected (planned), new_normal (the level moved for good).",
        ),
        "from": Param(
            None, type=["null", "string"], format="date-time",
            description="For a series: where the label begins (new_normal: when the new level began). ISO 8601, UTC.",
        ),
        "to": Param(
            None, type=["null", "string"], format="date-time",
            description="For a series: where the label ends. Empty: open-ended.",
        ),
        "note": Param("", type="string", maxLength=1000, description="Why, for whoever reads the incident next."),
        "recurs": Param(
            None, type=["null", "string"], enum=[None, "daily", "weekly"],
            description="With 'expected': the planned deviation comes back every day or week, so the next one is expected too.",
        ),
    },
)
def forewarn_label():
    @task
    def write_label(params=None, dag_run=None) -> dict:
        """Validate the label (an error names the field) and write it."""
        from forewarn.tasks import label_from_params, settings_for_run

        by = getattr(dag_run, "triggering_user_name", None) or "airflow"
        return label_from_params(settings_for_run(), params or {}, by=by)

    write_label()


forewarn_label()
