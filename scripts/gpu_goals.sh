#!/usr/bin/env bash
# Measures the GPU goals of docs/BENCHMARKS.md ("GPU goals"), most important first, one JSON file per
# run under $OUT (or out/gpu-goals), their logs in log.txt, the GPU in gpu.txt:
#   glvc-720p        GLVC 720p: encode alone, decode, whole job (quality on 1 GOP in 10), GPU busy
#   gvc-speed-720p   GVC 720p, Wan 1.3B config, one 33-frame GOP, K=16384, M=64: encode/decode s, split
#   glvc-720p-half   GLVC 720p with two actors on one GPU (--num-gpus-per-actor 0.5)
#   glvc-1080p       GLVC 1080p whole job
#   gvc-720p         GVC 720p through the whole pipeline
#   gvc-speed-720p-topk / -compiled   the folded top-M selection, torch.compile of the transformer
#   gvc-speed-480p   GVC 480p (the earlier H100 figure: 10.4 s)
#   glvc-720p-eager  GLVC 720p without torch.compile (the compile's gain)
# Models are full-size with random weights (timing only). GLVC clips are 490 frames, 10 GOPs of 49
# (its default at 24 fps), so quality is measured on GOP 0 of each video: 1 in 10.
# Usage: scripts/gpu_goals.sh [RUN ...]   EXTRA_SITE=dir of extra packages (offline installs); BUDGET=seconds for all runs (default 560): a run starts only
# with 60 s left and is cut at the budget; RUN_TIMEOUT caps one run (default 300).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="${EXTRA_SITE:+$EXTRA_SITE:}$PWD" RAY_AUTH_MODE=disabled PYTHONUNBUFFERED=1
out=${OUT:-out/gpu-goals}
mkdir -p "$out"
glvc="jobs.bench gpu --codec glvc --random-model --workdir /tmp --json --metrics-every 10 --frames 490"
gvc="jobs.bench gpu --codec gvc --random-model --workdir /tmp --json --videos 1 --frames 33 --quality 64 --option atoms=16384"
speed="bench.gvc_speed --config wan-1.3b --device cuda --frames 33 --atoms 16384 --m 64 --warmup 1 --threads 8"
declare -A runs=(
  [glvc-720p]="$glvc --size 1280x720 --videos 1"
  [gvc-speed-720p]="$speed --width 1280 --height 720"
  [glvc-720p-half]="$glvc --size 1280x720 --videos 2 --actors 2 --num-gpus-per-actor 0.5"
  [glvc-1080p]="$glvc --size 1920x1080 --videos 1"
  [gvc-720p]="$gvc --size 1280x720"
  [gvc-speed-720p-topk]="$speed --width 1280 --height 720 --select topk"
  [gvc-speed-720p-compiled]="$speed --width 1280 --height 720 --compile-transformer default"
  [gvc-speed-480p]="$speed --width 832 --height 480"
  [glvc-720p-eager]="$glvc --size 1280x720 --videos 1 --option compile=false"
)
order=(glvc-720p gvc-speed-720p glvc-720p-half glvc-1080p gvc-720p gvc-speed-720p-topk
       gvc-speed-720p-compiled gvc-speed-480p glvc-720p-eager)
[ $# -gt 0 ] && order=("$@")
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$out/gpu.txt" 2>&1
begun=$(date +%s)
for name in "${order[@]}"; do
  left=$(( ${BUDGET:-560} - ($(date +%s) - begun) ))
  if [ "$left" -lt 60 ]; then echo "$name: skipped (budget spent)" | tee -a "$out/log.txt"; continue; fi
  limit=$(( left < ${RUN_TIMEOUT:-300} ? left : ${RUN_TIMEOUT:-300} ))
  started=$(date +%s)
  echo "== $name: ${runs[$name]}" >>"$out/log.txt"
  # shellcheck disable=SC2086  # the options are words
  timeout "$limit" python3 -m ${runs[$name]} >"$out/$name.json" 2>>"$out/log.txt"
  echo "$name: exit $? in $(( $(date +%s) - started )) s" | tee -a "$out/log.txt"
done
