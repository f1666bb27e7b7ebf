"""Build what Amazon MWAA takes, under build/mwaa/:

    dags/               the DAG files and an .airflowignore
    plugins.zip         the forewarn wheel (and anything in plugins/ that extends Airflow)
    requirements.txt    MWAA's --constraint line, forewarn's runtime needs, and the wheel
                        through --find-links /usr/local/airflow/plugins

Usage: .venv/bin/python scripts/mwaa_bundle.py   (or `make mwaa-bundle`)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "mwaa"


def main() -> int:
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "dags").mkdir(parents=True)
    wheels = OUT / "wheels"
    subprocess.run(  # noqa: S603 - our interpreter building our package
        [str(ROOT / ".venv" / "bin" / "uv"), "build", "--wheel", "--out-dir", str(wheels), str(ROOT)],
        check=True, capture_output=True,
    )
    (wheel,) = wheels.glob("forewarn-*.whl")
    for dag in sorted((ROOT / "dags").glob("*.py")):
        shutil.copy2(dag, OUT / "dags" / dag.name)
    (OUT / "dags" / ".airflowignore").write_text("# only the DAG files are parsed\n__pycache__/\n.*\\.pyc\n")
    with zipfile.ZipFile(OUT / "plugins.zip", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.write(wheel, wheel.name)
        for item in sorted((ROOT / "plugins").rglob("*.py")):
            zf.write(item, item.relative_to(ROOT / "plugins"))
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    version = wheel.name.split("-")[1]
    lines += ["# forewarn itself, from the wheel in plugins.zip", "--find-links /usr/local/airflow/plugins", f"forewarn=={version}"]
    (OUT / "requirements.txt").write_text("\n".join(lines) + "\n")
    shutil.rmtree(wheels)
    print(f"MWAA bundle in {OUT.relative_to(ROOT)}: dags/ ({len(list((OUT / 'dags').glob('*.py')))} DAGs), plugins.zip ({wheel.name}), requirements.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
