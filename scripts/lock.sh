#!/usr/bin/env bash
# Resolve requirements/dev.in for Python 3.11 against MWAA's Airflow 3.3.1 constraints (Python
# 3.12). The pins that have no Python 3.11 build (numpy 2.5, scipy 1.18) are left to the
# resolver; everything else stays at MWAA's version. Usage: scripts/lock.sh [constraints-file]
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:-../shared/mwaa/airflow-3.3.1-constraints-3.12.txt}
[ -f "$src" ] || { echo "lock: MWAA constraints file not found: $src (pass its path)" >&2; exit 2; }
mkdir -p .cache
grep -v '^#' "$src" | grep -v '^$' | grep -v -E '^(numpy|scipy)==' > .cache/mwaa-constraints-py311.txt
.venv/bin/uv pip compile requirements/dev.in \
  -c .cache/mwaa-constraints-py311.txt \
  --python-version 3.11 --no-header --no-annotate \
  -o requirements/lock-py311.txt
echo "lock: requirements/lock-py311.txt updated"
