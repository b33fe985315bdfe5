#!/usr/bin/env bash
# Create .venv and install vidarc with its test tools. Idempotent: reinstalls only when pyproject.toml
# (or this script) changed.
#
# uv resolves and installs the whole stack in under a minute where pip's resolver backtracks for a
# quarter of an hour over s3fs/aiobotocore/boto3; it is installed on the fly (into .venv-tools/) when
# it is not on PATH. The package indexes, links and constraints configured for pip on this machine
# are passed on to uv, so both see the same packages. VIDARC_INSTALLER=pip forces pip.
#
# The installed packages' bytecode is compiled once here (`compileall`, as pip does by default): a
# process that imports torch, diffusers and Ray otherwise compiles some 3,000 modules from source on
# every start wherever Python may not write bytecode caches (PYTHONDONTWRITEBYTECODE, a read-only
# venv): 11 s of a 24 s `vidarc restore` on a 2-core machine. The repository's own packages are
# compiled on every run (only what changed): each test's subprocesses and Ray workers import them.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
stamp="$VENV/.vidarc-installed"
want=$(cat pyproject.toml "$0" | sha256sum | cut -d' ' -f1)
compile_sources() {  # this repository's own modules, for the same reason (stale ones recompile: cheap)
  "$VENV/bin/python" -m compileall -q -j 0 codec pipeline jobs bench >/dev/null 2>&1 || true
}
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  compile_sources
  exit 0
fi
echo "vidarc: installing into $VENV (about a minute with uv)…"

pip_settings() {  # uv options for what pip is configured with (pip.conf files and PIP_* variables)
  local key value item
  while IFS='=' read -r key value; do
    value=${value#\'}; value=${value%\'}
    case "$key" in
      *.index-url) echo "--index-url"; echo "$value" ;;
      *.extra-index-url) for item in $value; do echo "--extra-index-url"; echo "$item"; done ;;
      *.find-links) for item in $value; do echo "--find-links"; echo "$item"; done ;;
      *.constraint) for item in $value; do [ -f "$item" ] && { echo "--constraint"; echo "$item"; }; done ;;
    esac
  done < <(python3 -m pip config list 2>/dev/null || true)
}

install_with_uv() {
  local uv
  uv=$(command -v uv || true)
  if [ -z "$uv" ]; then
    python3 -m pip install --quiet --disable-pip-version-check --target .venv-tools uv >/dev/null 2>&1 || return 1
    uv=.venv-tools/bin/uv
    export PYTHONPATH=".venv-tools${PYTHONPATH:+:$PYTHONPATH}"
  fi
  local options=()
  mapfile -t options < <(pip_settings)
  [ -x "$VENV/bin/python" ] || "$uv" venv --quiet --seed "$VENV" -p python3
  VIRTUAL_ENV="$VENV" "$uv" pip install --quiet --index-strategy unsafe-best-match "${options[@]}" -e '.[dev]'
}

if [ "${VIDARC_INSTALLER:-uv}" != "pip" ] && install_with_uv; then
  :
else
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e '.[dev]'
fi
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$VENV/bin/python" -m compileall -q -j 0 "$site" >/dev/null 2>&1 || true  # a few vendored test files never compile
compile_sources
echo "$want" > "$stamp"
