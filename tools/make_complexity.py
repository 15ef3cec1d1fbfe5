"""Regenerate src/visionzoo/factory/complexity.json: every registered variant's parameter count and
GMACs at its default input size, measured on the `meta` device.

The table is committed data, read by `visionzoo.factory.model_complexity` so that `visionzoo list` and
`advise` need not measure on a fresh install. Each row keeps the key of the card and source it was
measured from (`visionzoo.factory.complexity.complexity_key`); tests/test_complexity.py fails when a
row is missing or its key is out of date, and names this script.

    .venv/bin/python tools/make_complexity.py          # measures the missing and out-of-date rows
    .venv/bin/python tools/make_complexity.py --all    # measures every row again (a new PyTorch, say)
"""

from __future__ import annotations

import json
import sys
import time

from visionzoo.factory import measure_complexity
from visionzoo.factory.complexity import SHIPPED_COMPLEXITY, complexity_key, shipped_table
from visionzoo.files import atomic_write
from visionzoo.registry import get_card, list_models


def main(argv: list[str]) -> int:
    started = time.monotonic()
    kept = {} if "--all" in argv else shipped_table()
    rows, measured = {}, 0
    for name in list_models():
        key = complexity_key(get_card(name))
        if kept.get(name, {}).get("key") == key:
            rows[name] = kept[name]
        else:
            rows[name] = {**measure_complexity(name), "key": key}
            measured += 1
    about = ("params and GMACs of each registered variant at its default input size, measured on the meta device "
             "by tools/make_complexity.py; a row is used only while its key matches")
    lines = [f"  {json.dumps(name)}: {json.dumps(row)}" for name, row in rows.items()]  # one row a line: readable diffs
    atomic_write(SHIPPED_COMPLEXITY, ('{"about": ' + json.dumps(about) + ',\n "models": {\n' + ",\n".join(lines)
                                      + "\n}}\n").encode())
    print(f"wrote {len(rows)} rows ({measured} measured) to {SHIPPED_COMPLEXITY} in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
