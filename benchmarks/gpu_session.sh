#!/usr/bin/env bash
# Every GPU figure that issues #7 (cifar10_gpu.py) and #8 (gpu_vs_timm.py) ask for, in one
# time-boxed run on a device machine (at most about 9.5 minutes):
#   here:    bash benchmarks/gpu_prepare.sh
#   device:  run(command="bash benchmarks/gpu_session.sh", carry=[".whl", ".devdata"], timeout_s=595)
# Each part has its own time limit and writes its log under $OUT as it goes, so a part that runs
# long still leaves the other parts' figures. The cheap, most informative parts run first.
# SMOKE=1 runs each script's smoke mode instead (any device; a check that the session will run).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}
DATA=.devdata/cifar10-jpg.tar.gz
[ -f "$DATA" ] || DATA=../shared/data/cifar10-jpg.tar.gz
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --find-links .whl airbench==0.1.8 rich 2>&1 | tail -2
fi

part() {  # part NAME SECONDS COMMAND...: run COMMAND with a time limit, its output into $OUT/NAME.log
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): $*"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  echo "== $name: exit ${PIPESTATUS[0]} after ${SECONDS}s of the session"
}

{
  nvidia-smi -L 2>/dev/null
  "$PY" -c "import torch, timm, visionzoo; print('torch', torch.__version__, '| timm', timm.__version__, '| cuda', torch.cuda.is_available())"
  "$PY" -c "import airbench; print('airbench', airbench.__file__)" 2>&1 | tail -1
} 2>&1 | tee "$OUT/env.log"

if [ "${SMOKE:-0}" = 1 ]; then
  part gpu_vs_timm 300 "$PY" benchmarks/gpu_vs_timm.py --smoke
  part cifar10_gpu 600 "$PY" benchmarks/cifar10_gpu.py --data "$DATA" --smoke
else
  part gpu_vs_timm_eager 120 "$PY" benchmarks/gpu_vs_timm.py --backends eager
  part cifar10_gpu 210 "$PY" benchmarks/cifar10_gpu.py --data "$DATA" --runs 3 --also-epochs 11,12 ${CIFAR_ARGS:-}
  part gpu_vs_timm_compile 240 "$PY" benchmarks/gpu_vs_timm.py --backends compile --compile-models resnet50
fi
echo "== summary"
grep -h "RESULT\|FAILED\|Error" "$OUT"/*.log | tee "$OUT/summary.log"
