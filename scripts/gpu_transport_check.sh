#!/usr/bin/env bash
# GPU transport check: the same agent rollout over HTTPS (full, store) vs WebSocket (connection), servers in
# their own processes running the torch engine (cuda-1b) on CUDA. Run on the device machine from the repo root
# with the wheels of .whl carried (python 3.12 image). Results go to $OUT (summary.json, run.json, turns.jsonl,
# rollouts.jsonl, log.txt).
set -o pipefail
OUT=${OUT:-/tmp/gpu_transport_out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -c 'import torch;print(torch.__version__, torch.cuda.get_device_name())' 2>&1 | tee "$OUT/log.txt"
python3 -c 'import servers.base, clients.base as c; from turnbench.transports import TRANSPORTS; [c.client_class(t) for t in TRANSPORTS]; print("imports ok")' 2>&1 | tee -a "$OUT/log.txt"
SCEN=${SCEN:-scripts/gpu-agent.toml}
ROLLOUTS=${ROLLOUTS:-5}
t0=$(date +%s)
timeout "${RUN_TIMEOUT:-240}" python3 -m loadtests.cli run --scenario "$SCEN" --transports https,ws \
  --states full,store,connection --set engine=torch --set device=cuda --rollouts "$ROLLOUTS" --warmup 1 \
  --concurrency 1 --no-tls --quiet --server-timeout-s 120 --out "$OUT/run" 2>&1 | tee -a "$OUT/log.txt"
rc=$?
echo "run rc=$rc wall_s=$(( $(date +%s) - t0 ))" | tee -a "$OUT/log.txt"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv 2>&1 | tee -a "$OUT/log.txt"
for f in summary.json run.json turns.jsonl rollouts.jsonl; do [ -f "$OUT/run/$f" ] && cp "$OUT/run/$f" "$OUT/"; done
rm -rf "$OUT/run"
exit $rc
