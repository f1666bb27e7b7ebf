"""The forewarn command as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port

FOREWARN = str(Path(sys.executable).with_name("forewarn"))


def run(*args, env=None, home=None):
    full_env = {k: v for k, v in os.environ.items() if k != "AIRFLOW_CONN_AWS_DEFAULT"}
    full_env.update(env or {})
    return subprocess.run([FOREWARN, "--home", str(home), *args], capture_output=True, text=True, env=full_env, timeout=120, check=False)


@pytest.mark.stack
def test_stack_up_produce_status_down(tmp_path):
    port = free_port()
    up = run("stack", "up", "--port", str(port), home=tmp_path)
    assert up.returncode == 0, up.stderr
    try:
        assert f"http://127.0.0.1:{port}" in up.stdout and "AIRFLOW_CONN_AWS_DEFAULT" in up.stdout
        produced = run("produce", "--minutes", "20", "--via", "landing", home=tmp_path)
        assert produced.returncode == 0, produced.stderr
        assert f"127.0.0.1:{port}" in produced.stdout and "lines ->" in produced.stdout
        sent = run("produce", "--minutes", "5", "--inject", "drop", "--series", "orders.count", home=tmp_path)
        assert sent.returncode == 0, sent.stderr
        assert "records -> Kinesis stream forewarn-events" in sent.stdout
        status = run("stack", "status", home=tmp_path)
        assert status.returncode == 0 and '"forwarded_records"' in status.stdout
        labelled = run("label", "orders.count|2026-11-27T10:00", "--as", "not_anomaly", "--note", "load test", home=tmp_path)
        assert labelled.returncode == 0, labelled.stderr
        assert "labelled orders.count|2026-11-27T10:00 as not_anomaly -> s3://forewarn-data/labels/" in labelled.stdout
        wrong = run("label", "orders.count", "--as", "new_normal", home=tmp_path)
        assert wrong.returncode == 2 and "new_normal label on a series needs 'from'" in wrong.stderr
        window = run("maintenance", "etl.*", "--cron", "0 4 * * *", "--minutes", "20", "--tz", "Europe/Berlin", home=tmp_path)
        assert window.returncode == 0, window.stderr
        assert "maintenance window for etl.*: 0 4 * * * for 20 min (Europe/Berlin) -> s3://forewarn-data/maintenance/" in window.stdout
        bad = run("maintenance", "etl.*", "--cron", "at four", "--minutes", "20", home=tmp_path)
        assert bad.returncode == 2 and "not a five-field cron expression" in bad.stderr
        snoozed = run("snooze", "orders.count|2026-11-27T10:00", "--minutes", "30", "--note", "on it", home=tmp_path)
        assert snoozed.returncode == 0, snoozed.stderr
        assert "snoozed orders.count until " in snoozed.stdout and "s3://forewarn-data/maintenance/" in snoozed.stdout
    finally:
        down = run("stack", "down", home=tmp_path)
    assert "stack stopped" in down.stdout
    assert run("stack", "status", home=tmp_path).returncode == 1


def test_errors_are_one_line_that_says_what_to_do(tmp_path):
    out = run("produce", "--replay", str(tmp_path / "missing.csv"), "--series", "x", env={"FOREWARN_GRAIN_SECONDS": "7"}, home=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("forewarn: grain_seconds=7 does not divide an hour")


def test_eval_m4_on_a_generated_file(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    rows = ['"V1","V2","V3"']
    for i in range(6):
        n = 24 * 30 + (0 if i % 2 else 40)
        t = np.arange(n)
        y = 100 + 20 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 2, n)
        rows.append(",".join([f'"H{i + 1}"'] + [f"{v:.3f}" for v in y] + [""] * (40 if i % 2 else 0)))
    train = tmp_path / "train.csv"
    train.write_text("\n".join(rows) + "\n")
    out = tmp_path / "fc.csv"
    result = run("eval-m4", "--train", str(train), "--out", str(out), "--holdout", "48", "--jobs", "2", home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "seasonal naive" in result.stdout and "6 series" in result.stdout
    lines = out.read_text().splitlines()
    header = lines[0].split(",")
    assert header[:2] == ["id", "F1"] and header[48] == "F48" and header[49] == "lo95_1" and header[-1] == "hi95_48"
    assert len(lines) == 7 and lines[1].startswith("H1,")
    forewarn_mase, naive_mase = (float(line.split()[-3]) for line in result.stdout.splitlines() if line.startswith(("forewarn ", "seasonal naive")))
    assert forewarn_mase < naive_mase


def test_eval_m4_history_keeps_each_series_last_values(tmp_path):
    import numpy as np

    from forewarn.eval_m4 import M4_HOURLY, evaluate

    t = np.arange(24 * 30)
    y = 100 + 20 * np.sin(2 * np.pi * t / 24) + np.random.default_rng(1).normal(0, 2, t.size)
    train = tmp_path / "train.csv"
    train.write_text('"V1","V2"\n' + ",".join(['"H1"'] + [f"{v:.3f}" for v in y]) + "\n")
    full = evaluate(train, tmp_path / "a.csv", holdout=48, jobs=1, cfg=M4_HOURLY)
    young = evaluate(train, tmp_path / "b.csv", holdout=48, jobs=1, cfg=M4_HOURLY, history=24 * 14)
    assert list(full["models"]) == ["ar169+ar169p+log-ar169+log-ar169p"]  # 28 days: the week lags alone
    assert list(young["models"]) == ["ar49+ar49p+log-ar49+log-ar49p+ar168+ar168p+log-ar168+log-ar168p"]  # 14: both sets
    refused = run("eval-m4", "--train", str(train), "--out", str(tmp_path / "c.csv"), "--holdout", "48", "--history", "0", home=tmp_path)
    assert refused.returncode == 2 and "keep at least 25 values" in refused.stderr


def test_eval_nab_on_a_generated_nab_layout(tmp_path):
    import json

    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(3)
    data = tmp_path / "nab"
    labels = {}
    for name, spike in (("spiky", True), ("calm", False)):
        stamps = pd.date_range("2014-01-01", periods=24 * 12, freq="h")
        y = 50 + 10 * np.sin(2 * np.pi * np.arange(stamps.size) / 24) + rng.normal(0, 1, stamps.size)
        windows = []
        if spike:
            y[24 * 9] += 40
            windows = [[f"{stamps[24 * 9 - 5]}.000000", f"{stamps[24 * 9 + 5]}.000000"]]
        (data / "data" / "synthetic").mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"timestamp": stamps.strftime("%Y-%m-%d %H:%M:%S"), "value": y}).to_csv(data / "data" / "synthetic" / f"{name}.csv", index=False)
        labels[f"synthetic/{name}.csv"] = windows
    (data / "labels").mkdir()
    (data / "labels" / "combined_windows.json").write_text(json.dumps(labels))
    out = tmp_path / "out"
    result = run("eval-nab", "--data", str(data), "--out", str(out), "--score", "--jobs", "2", home=tmp_path)
    assert result.returncode == 0, result.stderr
    written = pd.read_csv(out / "synthetic" / "spiky.csv")
    assert list(written.columns) == ["timestamp", "value", "anomaly_score"] and len(written) == 24 * 12
    assert written["anomaly_score"].between(0, 1).all() and written["anomaly_score"].idxmax() == 24 * 9
    own, budget = [line.split() for line in result.stdout.splitlines() if line.startswith("standard")]
    assert float(own[1]) > 90  # the spike is found at the window's middle, nothing else fires
    # the second table chooses among thresholds of at least the budget's (1.1: none, nothing
    # alerts), so it can only score less
    assert "within the false-alarm budget" in result.stdout and float(budget[3]) >= 0.615 and float(budget[1]) <= float(own[1])


def test_inject_shapes_what_a_running_live_producer_sends(tmp_path):
    """With `forewarn airflow` running, `produce --inject drop` is applied by its live producer
    (sending extra events could never make a drop): the next minutes it sends carry the drop."""
    from forewarn.config import Settings
    from forewarn.local.live import LiveProducer, pid_path

    (tmp_path / "live").mkdir()
    pid_path(tmp_path).write_text(str(os.getpid()))  # a live process owns this home
    out = run("produce", "--minutes", "30", "--inject", "drop", "--series", "orders.count", "--magnitude", "0.05", home=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "the live producer applies drop (magnitude 0.05) to orders.count" in out.stdout

    class NoKinesis:
        def client(self, name):
            return None

    import math
    import time

    from forewarn.synth import plan_landing

    now = time.time()
    feeder = LiveProducer(NoKinesis(), Settings.load(), now - 600, tmp_path)
    (anomaly,) = feeder._injected()
    assert (anomaly.kind, anomaly.series, anomaly.duration, anomaly.magnitude) == ("drop", "orders.count", 1800.0, 0.05)
    # the whole minutes the drop covers (its first minute is partly before it); at 07:00 UTC and
    # at weekends the demo's rate is at its lowest, so a partial minute's events weighed enough
    # to fail about one run in 200
    lo = math.ceil(anomaly.start / 60) * 60
    feeder.scenario.anomalies = feeder.base_anomalies + [anomaly]
    during = plan_landing(feeder.scenario, lo, anomaly.start + 600, 2, send_at=now)
    feeder.scenario.anomalies = feeder.base_anomalies
    normal = plan_landing(feeder.scenario, lo, anomaly.start + 600, 2, send_at=now)
    count = lambda plan: int((plan["series"] == "orders.count").sum())  # noqa: E731
    assert count(during) < 0.2 * count(normal)
