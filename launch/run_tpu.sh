#!/usr/bin/env bash
# Per-worker entry on a TPU VM: what `launch/tpu_vm.sh train` runs on every host of a slice.
# It runs the training stage from this repository's virtualenv. On a multi-host slice it sets
# REW_JAX_DISTRIBUTED=1, which tells the training loop to call jax.distributed.initialize()
# before anything else touches JAX; on Cloud TPU, JAX finds the coordinator, the process
# count and this host's process id by itself, so nothing else is passed.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=launch/lib.sh
source launch/lib.sh

usage() {
  cat <<'EOF'
usage: launch/run_tpu.sh --config SPEC --workdir DIR --num-hosts N [options] [-- TRAIN_ARGS...]

Runs, from the repository root:
  env REW_JAX_DISTRIBUTED=0|1 VENV/bin/python -m rew_jax train --config SPEC --workdir DIR ...
REW_JAX_DISTRIBUTED is 1 when --num-hosts is above 1.

Required:
  --config SPEC     training config, e.g. configs/git_large_rew.py:variant
  --workdir DIR     checkpoints, metrics and logs (a gs:// path on multi-host slices)
  --num-hosts N     hosts (workers) in the slice; every host runs this same command

Options:
  --venv DIR        virtualenv to run from (default .venv in the repository root)
  --dry-run         print the command instead of running it
  -h, --help        this help

Anything after `--` goes to `python -m rew_jax train`.
EOF
}

config="" workdir="" num_hosts="" venv=.venv
train_args=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;
  esac
  case $1 in
    --config) need_value "$@"; config=$2; shift 2 ;;
    --workdir) need_value "$@"; workdir=$2; shift 2 ;;
    --num-hosts) need_value "$@"; num_hosts=$2; shift 2 ;;
    --venv) need_value "$@"; venv=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; train_args=("$@"); break ;;
    *) die "unknown option '$1' (training overrides go after --)" ;;
  esac
done

need "$config" --config
need "$workdir" --workdir
need "$num_hosts" --num-hosts
is_count "$num_hosts" || die "--num-hosts must be a positive integer, got '$num_hosts'"
if [[ $DRY_RUN != 1 && ! -x $venv/bin/python ]]; then
  die "no virtualenv at $venv (launch/tpu_vm.sh setup creates it)"
fi

distributed=0
[[ $num_hosts -gt 1 ]] && distributed=1
# exec: a preemption SIGTERM then reaches the training process, which checkpoints.
run --exec env "REW_JAX_DISTRIBUTED=$distributed" "$venv/bin/python" -m rew_jax train \
  --config "$config" --workdir "$workdir" ${train_args[@]+"${train_args[@]}"}
