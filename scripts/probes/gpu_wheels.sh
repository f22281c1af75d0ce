#!/usr/bin/env bash
# Run HERE (a machine with the package index), before the GPU check: downloads into .whl/ the wheels of the
# project's dependencies that the device image (python 3.12, x86-64; /work/.library/device/KINDS.md) lacks or
# has too old, pinned to the versions this checkout is developed with. scripts/probes/gpu_check.sh installs them there.
# .whl/ is git-ignored through .git/info/exclude and travels with the device tool's `carry: [".whl"]`.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .git/info && { grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude; }
PY=${PY:-python3}
WHEELS=(
  msgspec==0.22.0 orjson==3.13.0 starlette==1.10.0 uvicorn==0.54.0 httptools==0.9.0 websockets==15.0.1
  h11==0.16.0 h2==4.4.1 hpack==4.2.0 hyperframe==6.1.0 hypercorn==0.18.0 priority==2.0.0 wsproto==1.3.2
  sniffio==1.3.1 anyio==4.16.0 httpx==0.28.1 httpcore==1.0.9 trustme==1.2.1 cryptography==50.0.2 cffi==2.1.1
  pycparser==3.12 grpcio==1.85.3 grpcio-health-checking==1.85.1 grpcio-reflection==1.85.1 protobuf==7.36.2
  typing-extensions==4.16.0
)  # not the openai SDK (sdk-* transports: imported only when a run asks for them, and the GPU check does not)
PLATFORMS=()
for n in 28 27 24 17 14 12 5; do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
rm -rf .whl && mkdir .whl  # one version of each: two stop the install there
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d .whl "${WHEELS[@]}"
ls .whl | wc -l
du -sh .whl
