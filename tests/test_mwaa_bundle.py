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
                                                                   "forewarn_compare.py", "forewarn_train.py"]
    requirements = (bundle / "requirements.txt").read_text().splitlines()
    assert requirements[0].startswith("--constraint") and "constraints-3.3.1/constraints-3.12.txt" in requirements[0]
    assert "--find-links /usr/local/airflow/plugins" in requirements and requirements[-1] == "forewarn==0.1.0"
    with zipfile.ZipFile(bundle / "plugins.zip") as zf:
        (wheel,) = [n for n in zf.namelist() if n.endswith(".whl")]
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
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "['forewarn_aggregate', 'forewarn_compare', 'forewarn_train']" in out.stdout
