"""`make mwaa-bundle` builds what MWAA takes, and the DAGs import from the bundle alone: the
wheel in plugins.zip carries every module and data file they need."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import ROOT

BIN = Path(sys.executable).parent


def test_bundle_layout_and_dags_import_from_the_wheel(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / "mwaa_bundle.py")], check=True, capture_output=True)
    bundle = ROOT / "build" / "mwaa"
    assert sorted(p.name for p in (bundle / "dags").iterdir()) == [".airflowignore", "forewarn_aggregate.py",
                                                                   "forewarn_compare.py", "forewarn_label.py", "forewarn_maintenance.py",
                                                                   "forewarn_snooze.py", "forewarn_train.py"]
    requirements = (bundle / "requirements.txt").read_text().splitlines()
    assert requirements[0].startswith("--constraint") and "constraints-3.3.1/constraints-3.12.txt" in requirements[0]
    assert "--find-links /usr/local/airflow/plugins" in requirements and requirements[-1] == "forewarn==0.1.0"
    plugins = tmp_path / "plugins"  # MWAA unpacks plugins.zip into /usr/local/airflow/plugins
    with zipfile.ZipFile(bundle / "plugins.zip") as zf:
        (wheel,) = [n for n in zf.namelist() if n.endswith(".whl")]
        assert "forewarn_plugin.py" in zf.namelist()  # the UI page, at the top level as MWAA expects
        zf.extractall(plugins)
        zf.extract(wheel, tmp_path)
    target = tmp_path / "site"
    subprocess.run([str(BIN / "uv"), "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(tmp_path / wheel)],
                   check=True, capture_output=True)
    probe = (
        "import forewarn, sys\n"
        f"assert forewarn.__file__.startswith({str(target)!r}), forewarn.__file__\n"
        "from forewarn.query import sql_text, shipped_queries\n"
        "assert 'aggregate' in shipped_queries() and 'SELECT' in sql_text('aggregate')\n"
        "from forewarn.synth import load_scenario\n"
        "assert load_scenario().series\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(bundle / 'dags')!r})\n"
        "assert not bag.import_errors, bag.import_errors\n"
        "print(sorted(bag.dag_ids))\n"
        "from airflow import plugins_manager\n"
        "apps, _ = plugins_manager.get_fastapi_plugins()\n"
        "views, _ = plugins_manager._get_ui_plugins()\n"
        "print([a['url_prefix'] for a in apps], [v['url_route'] for v in views])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target), "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins)}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "['forewarn_aggregate', 'forewarn_compare', 'forewarn_label', 'forewarn_maintenance', 'forewarn_snooze', 'forewarn_train']" in out.stdout
    assert "['/forewarn'] ['forewarn']" in out.stdout


def test_bundle_requirements_install_into_a_fresh_venv(tmp_path):
    """What MWAA's worker does with requirements.txt, on Python 3.11: a new virtual environment
    with Airflow 3.3.1 (MWAA's base image), then the bundle's requirements. The constraints URL
    is not reachable from the test machine, so the pins come from requirements/lock-py311.txt,
    which was resolved against that very file (minus the pins that have no 3.11 build)."""
    subprocess.run([sys.executable, str(ROOT / "scripts" / "mwaa_bundle.py")], check=True, capture_output=True)
    bundle = ROOT / "build" / "mwaa"
    plugins = tmp_path / "plugins"
    with zipfile.ZipFile(bundle / "plugins.zip") as zf:
        zf.extractall(plugins)
    lines = (bundle / "requirements.txt").read_text().splitlines()
    assert lines[0].startswith("--constraint")
    local = [line.replace("/usr/local/airflow/plugins", str(plugins)) for line in lines[1:]]
    (tmp_path / "requirements.txt").write_text("\n".join(["apache-airflow==3.3.1", *local]) + "\n")
    venv = tmp_path / "venv"
    subprocess.run([str(BIN / "uv"), "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, capture_output=True)
    install = subprocess.run(
        [str(BIN / "uv"), "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"),
         "-r", str(tmp_path / "requirements.txt"), "-c", str(ROOT / "requirements" / "lock-py311.txt")],
        capture_output=True, text=True, check=False,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    probe = (
        "import forewarn, statsmodels, duckdb\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(bundle / 'dags')!r})\n"
        "assert not bag.import_errors, bag.import_errors\n"
        "print(sorted(bag.dag_ids), forewarn.__file__)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(plugins)
    out = subprocess.run([str(venv / "bin" / "python"), "-c", probe], env=env, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "['forewarn_aggregate', 'forewarn_compare', 'forewarn_label', 'forewarn_maintenance', 'forewarn_snooze', 'forewarn_train']" in out.stdout
    assert str(venv) in out.stdout  # forewarn came from the wheel, not from this checkout
