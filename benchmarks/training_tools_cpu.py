"""Moved into transfer_cpu.py: the EMA, test-time augmentation and greedy-soup arms are its `--arms ema tta soup`,
measured against the default fine-tune in the same run. This runs

    python benchmarks/transfer_cpu.py --models lite0 --arms visionzoo ema tta soup [ARGS]

with ARGS passed on (`--quick`, `--threads`, `--work`, ...).
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    script = Path(__file__).resolve().parent / "transfer_cpu.py"
    sys.argv = [str(script), "--models", "lite0", "--arms", "visionzoo", "ema", "tta", "soup", *sys.argv[1:]]
    runpy.run_path(str(script), run_name="__main__")
