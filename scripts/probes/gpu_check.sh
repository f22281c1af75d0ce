#!/usr/bin/env bash
# The device-machine entry of the GPU check (issue #18). Installs the wheels carried in .whl/ (made here by
# scripts/probes/gpu_wheels.sh: the project's dependencies the device image lacks), then runs scripts/probes/gpu_check.py,
# which writes summary.json, log.txt, calibrated-<config>.json and transports-{reuse,no-reuse}.json to $OUT
# and prints a short table last. With the device tool, from the repository root:
#   run(command="bash scripts/probes/gpu_check.sh", carry=[".whl"], timeout_s=600)
# BUDGET_S (default 540) bounds all parts together; extra arguments go to gpu_check.py (e.g. --parts ...).
set -o pipefail
OUT=${OUT:-/tmp/gpu_check_out}; mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total,clocks.sm,clocks.mem --format=csv \
  2>&1 | tee -a "$OUT/log.txt"
python3 -c 'import servers.base, clients.base, loadtests.runs.runner; print("imports ok")' 2>&1 | tee -a "$OUT/log.txt"
exec python3 scripts/probes/gpu_check.py --out "$OUT" --budget-s "${BUDGET_S:-540}" "$@"
