#!/usr/bin/env bash
# The GPU run: everything the project measures on one GPU (one H100/H200, no network), in about
# 8 minutes, into ONE JSON file. Each step is an existing benchmark with its own time limit; a step
# that fails or hangs is recorded (status, one-line error, seconds, its JSON) and the others still run.
# Steps and their exact commands: bench/gpu_suite.py; what they measure: docs/BENCHMARKS.md.
#
#   bash bench/gpu_suite.sh                        # on the GPU machine: $OUT/gpu_suite.json or ./gpu_suite.json
#   bash bench/gpu_suite.sh --out FILE             # elsewhere
#   bash bench/gpu_suite.sh --only gvc-speed-720p,load-cuda   # some steps again
#   bash bench/gpu_suite.sh --dry-run --out FILE   # every step on the CPU at tiny sizes (the plumbing)
#
# Options: --budget SECONDS (whole run, default 465), --workdir DIR (random models, clips; default
# $TMPDIR/vidarc-gpu-suite, reused by a second run). Environment: PYTHON (default: .venv/bin/python
# if there is one, else python3), EXTRA_SITE (a folder of extra packages, put on PYTHONPATH),
# VIDARC_COMMIT (the commit to record where the tree has no .git).
# Exit code: 0 when every step passed, 1 when one did not, 2 on bad arguments.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="${EXTRA_SITE:+$EXTRA_SITE:}$PWD${PYTHONPATH:+:$PYTHONPATH}"
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
py=${PYTHON:-}
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
exec "$py" -m bench.gpu_suite "$@"
