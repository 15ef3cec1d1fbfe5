#!/usr/bin/env bash
# Prepare, on this machine, what benchmarks/gpu_session.sh needs on a device machine that cannot
# reach the internet: .whl/ (airbench 0.1.8, the #7 anchor, and rich, as wheels) and
# .devdata/cifar10-jpg.tar.gz (a copy of ../shared/data's archive, which does not travel).
# Both folders are git-ignored; name them in the device call's `carry`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -m pip wheel -q --no-deps -w .whl airbench==0.1.8 rich markdown-it-py mdurl pygments
mkdir -p .devdata
install -m 644 ../shared/data/cifar10-jpg.tar.gz .devdata/
ls -l .whl .devdata
