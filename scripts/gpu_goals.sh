#!/usr/bin/env bash
# Measures the GPU goals of docs/BENCHMARKS.md ("GPU goals") with `vidarc bench gpu`, one JSON file per
# run under $OUT (or out/gpu-goals), their logs in log.txt, the GPU in gpu.txt: GLVC 720p (encode alone, decode, whole pipeline with quality on
# 1 GOP in 10, GPU busy), GVC 720p and 480p with the Wan 1.3B configuration (one 33-frame GOP,
# K=16384, M=64; with and without torch.compile of the transformer), GLVC 720p with two actors on one
# GPU, GLVC 1080p, and GLVC 720p without torch.compile. Models are full-size with random weights
# (timing only). GLVC clips are 490 frames, 10 GOPs of 49 (its default at 24 fps), so quality is
# measured on GOP 0 of each video: 1 in 10. Usage: scripts/gpu_goals.sh [RUN ...]  (default: all, most important first).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="${SITE:-/tmp/site}:$PWD" RAY_AUTH_MODE=disabled PYTHONUNBUFFERED=1
out=${OUT:-out/gpu-goals}
mkdir -p "$out"
gvc="--codec gvc --random-model --videos 1 --frames 33 --gop-frames 33 --quality 64 --option atoms=16384"
declare -A runs=(
  [glvc-720p]="--codec glvc --random-model --size 1280x720 --videos 1 --frames 490 --metrics-every 10"
  [gvc-720p]="$gvc --size 1280x720"
  [gvc-720p-compiled]="$gvc --size 1280x720 --option compile_transformer=default"
  [glvc-720p-half]="--codec glvc --random-model --size 1280x720 --videos 2 --frames 490 --metrics-every 10 --actors 2 --num-gpus-per-actor 0.5"
  [glvc-1080p]="--codec glvc --random-model --size 1920x1080 --videos 1 --frames 490 --metrics-every 10"
  [gvc-480p]="$gvc --size 832x480"
  [glvc-720p-eager]="--codec glvc --random-model --size 1280x720 --videos 1 --frames 490 --metrics-every 10 --option compile=false"
)
order=(glvc-720p gvc-720p glvc-720p-half glvc-1080p gvc-720p-compiled gvc-480p glvc-720p-eager)
[ $# -gt 0 ] && order=("$@")
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$out/gpu.txt" 2>&1
for name in "${order[@]}"; do
  started=$(date +%s)
  echo "== $name: ${runs[$name]}" >>"$out/log.txt"
  # shellcheck disable=SC2086  # the options are words
  timeout "${RUN_TIMEOUT:-280}" python3 -m jobs.bench gpu ${runs[$name]} --workdir /tmp --json \
    >"$out/$name.json" 2>>"$out/log.txt"
  echo "$name: exit $? in $(( $(date +%s) - started )) s" | tee -a "$out/log.txt"
done
