"""DAG integrity: every file imports without network, with the conventions this project keeps."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[1] / "dags"
EXPECTED_DAG_IDS = {"forewarn_aggregate", "forewarn_compare", "forewarn_label", "forewarn_maintenance", "forewarn_snooze",
                    "forewarn_train"}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    real_connect = socket.socket.connect

    def no_network(self, address):
        raise AssertionError(f"a DAG file opened a connection at parse time: {address}")

    socket.socket.connect = no_network
    try:
        return DagBag(dag_folder=str(DAGS))
    finally:
        socket.socket.connect = real_connect


def test_every_file_imports(dagbag):
    assert dagbag.import_errors == {}


def test_the_expected_dags_and_only_those(dagbag):
    assert set(dagbag.dag_ids) == EXPECTED_DAG_IDS


def test_one_dag_per_file_named_after_it(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert Path(dag.fileloc).stem == dag_id


@pytest.mark.parametrize("dag_id", sorted(EXPECTED_DAG_IDS))
def test_conventions(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    assert dag.doc_md and dag_id in dag.doc_md and "IAM" in dag.doc_md
    assert "forewarn" in dag.tags
    for param_name, param in dag.params.items():
        assert param.description, f"param {param_name} needs a description for the trigger form"
        assert param.schema.get("type"), f"param {param_name} needs a type"
    for task in dag.tasks:
        assert task.retries >= 2, task.task_id
        assert task.execution_timeout is not None, task.task_id


def test_dag_files_import_airflow_sdk_not_airflow_2_paths():
    for path in DAGS.glob("*.py"):
        text = path.read_text()
        assert "from airflow.models" not in text and "from airflow.decorators" not in text, path.name
        assert "Variable.get" not in text.split("@dag")[0], f"{path.name} reads a Variable at parse time"


def test_training_can_also_follow_the_aggregates_asset(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("FOREWARN_TRAIN_ON_ASSET", "true")
    dag = DagBag(dag_folder=str(DAGS / "forewarn_train.py")).dags["forewarn_train"]
    assert "aggregates" in str(dag.timetable) and "30 0 * * *" in str(dag.timetable)


def test_the_comparison_maps_one_task_over_each_shard(monkeypatch):
    """``FOREWARN_COMPARE_SHARDS`` is read when the DAG is parsed: one mapped compare task per
    shard, each given its shard; with one shard, a plain task as before."""
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("FOREWARN_COMPARE_SHARDS", "4")
    bag = DagBag(dag_folder=str(DAGS / "forewarn_compare.py"))
    assert bag.import_errors == {}
    task = bag.dags["forewarn_compare"].get_task("compare")
    assert type(task).__name__.endswith("MappedOperator")
    assert task.op_kwargs_expand_input.value["shard"] == [0, 1, 2, 3]
    monkeypatch.setenv("FOREWARN_COMPARE_SHARDS", "1")
    single = DagBag(dag_folder=str(DAGS / "forewarn_compare.py")).dags["forewarn_compare"]
    assert not type(single.get_task("compare")).__name__.endswith("MappedOperator")


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        ("2026-12-08T01:02:23", "2026-12-08T01:07:23", ("2026-12-08T01:00:00", "2026-12-08T01:05:00")),  # a manual run
        ("2026-12-08T01:00:00", "2026-12-08T01:05:00", ("2026-12-08T01:00:00", "2026-12-08T01:05:00")),  # a scheduled one
        ("2026-12-07T23:57:00", "2026-12-08T00:02:00", ("2026-12-07T23:55:00", "2026-12-08T00:00:00")),  # across midnight
        ("2026-12-08T01:05:00", "2026-12-08T01:07:23", ("2026-12-08T01:00:00", "2026-12-08T01:05:00")),  # shorter than one
    ],
)
def test_a_manual_compare_run_judges_the_last_whole_interval_before_its_end(start, end, expected):
    """Airflow hands the task pendulum date-times; the interval comes back on the schedule's grid."""
    import pendulum

    from forewarn.config import Settings
    from forewarn.tasks import aligned_interval

    settings = Settings.load({"compare_minutes": 5}, environ={})
    got = aligned_interval(settings, pendulum.parse(start), pendulum.parse(end))
    assert tuple(t.isoformat() for t in got) == tuple(f"{e}+00:00" for e in expected)


def test_the_compare_task_hands_the_comparison_the_aligned_interval(monkeypatch):
    """What the DAG's ``compare`` task runs (``tasks.compare``) with a manual run's interval, as
    Airflow gives it (pendulum, ending at the trigger moment): the comparison is asked for the
    last whole interval."""
    import pendulum

    from forewarn import aggregate, aws, compare, tasks
    from forewarn.config import Settings

    asked = []

    class Stop(Exception):
        pass

    def judged(settings, engine, s3, cloudwatch, sinks, start, end, **kwargs):
        asked.append((start.isoformat(), end.isoformat()))
        raise Stop

    class Clients:
        s3, region = None, "us-east-1"

        def client(self, name):
            return None

    monkeypatch.setattr(aws.AwsClients, "from_airflow", classmethod(lambda cls, conn_id: Clients()))
    monkeypatch.setattr(aggregate, "make_engine", lambda settings, clients: None)
    monkeypatch.setattr(compare, "compare_interval", judged)
    settings = Settings.load({"compare_minutes": 5, "incident_sinks": "opscenter"}, environ={})
    with pytest.raises(Stop):
        tasks.compare(settings, pendulum.parse("2026-12-08T01:02:23"), pendulum.parse("2026-12-08T01:07:23"), True)
    assert asked == [("2026-12-08T01:00:00+00:00", "2026-12-08T01:05:00+00:00")]
