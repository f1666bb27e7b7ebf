"""Build a 58-file NAB-layout folder from a smaller one, for timing `forewarn eval-nab` at the
size of the full benchmark (58 files, about 366,000 rows) when only a subset is at hand: the
largest files are copied round-robin under new names, with their label windows.

    .venv/bin/python benchmarks/nab_58_files.py --data ../shared/nab --out /tmp/nab58
    time .venv/bin/forewarn eval-nab --data /tmp/nab58 --out /tmp/nab58out --score --jobs 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="NAB-layout folder to draw from")
    parser.add_argument("--out", required=True, help="folder to create (replaced if it exists)")
    parser.add_argument("--files", type=int, default=58)
    parser.add_argument("--largest", type=int, default=25, help="how many of the largest files to cycle")
    args = parser.parse_args()
    src, dst = Path(args.data), Path(args.out)
    labels = json.loads((src / "labels" / "combined_windows.json").read_text())
    rows = {name: sum(1 for _ in (src / "data" / name).open()) - 1 for name in labels}
    largest = sorted(labels, key=lambda name: -rows[name])[: args.largest]
    shutil.rmtree(dst, ignore_errors=True)
    out, total = {}, 0
    for i, name in zip(range(args.files), itertools.cycle(largest), strict=False):
        category, file = name.split("/")
        copy = f"{category}/copy{i:02d}_{file}"
        (dst / "data" / category).mkdir(parents=True, exist_ok=True)
        shutil.copy(src / "data" / name, dst / "data" / copy)
        out[copy] = labels[name]
        total += rows[name]
    (dst / "labels").mkdir(parents=True)
    (dst / "labels" / "combined_windows.json").write_text(json.dumps(out, indent=1))
    print(f"{len(out)} files, {total:,} rows -> {dst}")


if __name__ == "__main__":
    main()
