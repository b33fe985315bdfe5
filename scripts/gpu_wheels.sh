#!/usr/bin/env bash
# Wheels that a bare GPU machine (Python 3.12, PyTorch and Triton preinstalled, no package index)
# needs to run `scripts/gpu_goals.sh`, split in two folders that each travel in one copy of at most
# 64 MiB with the working tree: .whl/a (Ray, without its Java jar, dashboard front end and RLlib:
# unused here) and .whl/b (PyAV, diffusers, constriction, crc32c, pytorch-msssim, jsonschema). Run here
# once (it keeps `.whl/` out of git through info/exclude). See docs/BENCHMARKS.md, "GPU goals".
set -euo pipefail
cd "$(dirname "$0")/.."
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
fetch() {  # folder, then name==version ...
  local dir=$1; shift
  mkdir -p "$dir"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$dir" "$@"
}
fetch .whl/a ray==2.60.0
zip -q -d .whl/a/ray-2.60.0-*.whl 'ray/jars/*' 'ray/dashboard/client/build/*' 'ray/rllib/*' '*.js.map' || true
fetch .whl/b av==18.1.0 constriction==0.5.0 crc32c==2.9.post0 diffusers==0.42.1 pytorch-msssim==1.0.0 \
  jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 \
  rpds-py==2026.9.1
du -sh .whl/a .whl/b
