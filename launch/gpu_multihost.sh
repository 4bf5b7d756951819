#!/usr/bin/env bash
# Multi-host GPU training: run this once on every host (one process per host, driving all of
# that host's GPUs), by hand, with pdsh/ssh, or under SLURM via launch/slurm_gpu.sbatch.
# It passes the cluster layout to the training loop through the environment:
#   REW_JAX_DISTRIBUTED=1            call jax.distributed.initialize() at start-up
#   REW_JAX_COORDINATOR_ADDRESS      HOST:PORT of process 0's coordinator service
#   REW_JAX_NUM_PROCESSES            number of processes (hosts)
#   REW_JAX_PROCESS_ID               this process, 0 .. N-1
#   JAX_LOCAL_DEVICE_IDS             GPUs this process drives (read by JAX itself)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=launch/lib.sh
source launch/lib.sh

usage() {
  cat <<'EOF'
usage: launch/gpu_multihost.sh --config SPEC --workdir DIR --num-processes N --process-id I
                               --coordinator-address HOST:PORT [options] [-- TRAIN_ARGS...]

Runs, from the repository root:
  env REW_JAX_DISTRIBUTED=1 REW_JAX_COORDINATOR_ADDRESS=HOST:PORT REW_JAX_NUM_PROCESSES=N \
      REW_JAX_PROCESS_ID=I JAX_LOCAL_DEVICE_IDS=0,...,G-1 \
      VENV/bin/python -m rew_jax train --config SPEC --workdir DIR ...

Required:
  --config SPEC                   training config, e.g. configs/git_large_rew.py:variant
  --workdir DIR                   checkpoints, metrics and logs: a path every host sees
                                  (shared filesystem) or a gs:// bucket
  --num-processes N               processes in the job, one per host (alias --num-hosts;
                                  default $SLURM_NTASKS when set)
  --process-id I                  this host's process, 0..N-1 (default $SLURM_PROCID when set)
  --coordinator-address HOST:PORT process 0's host and a free port, the same on every host
                                  (not needed when N is 1)

Options:
  --gpus-per-host G  GPUs driven by this process: JAX_LOCAL_DEVICE_IDS=0..G-1 (default 8;
                     0 leaves the choice to JAX, which under SLURM means one GPU per task)
  --venv DIR         virtualenv to run from (default .venv in the repository root)
  --dry-run          print the command instead of running it
  -h, --help         this help

Anything after `--` goes to `python -m rew_jax train`.
EOF
}

config="" workdir="" coordinator="" venv=.venv gpus_per_host=8
num_processes=${SLURM_NTASKS:-}
process_id=${SLURM_PROCID:-}
train_args=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;
  esac
  case $1 in
    --config) need_value "$@"; config=$2; shift 2 ;;
    --workdir) need_value "$@"; workdir=$2; shift 2 ;;
    --num-processes|--num-hosts) need_value "$@"; num_processes=$2; shift 2 ;;
    --process-id) need_value "$@"; process_id=$2; shift 2 ;;
    --coordinator-address) need_value "$@"; coordinator=$2; shift 2 ;;
    --gpus-per-host) need_value "$@"; gpus_per_host=$2; shift 2 ;;
    --venv) need_value "$@"; venv=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; train_args=("$@"); break ;;
    *) die "unknown option '$1' (training overrides go after --)" ;;
  esac
done

need "$config" --config
need "$workdir" --workdir
need "$num_processes" "--num-processes (or SLURM_NTASKS)"
need "$process_id" "--process-id (or SLURM_PROCID)"
is_count "$num_processes" || die "--num-processes must be a positive integer, got '$num_processes'"
[[ $process_id =~ ^[0-9]+$ && $process_id -lt $num_processes ]] \
  || die "--process-id must be in 0..$((num_processes - 1)), got '$process_id'"
[[ $gpus_per_host =~ ^[0-9]+$ ]] || die "--gpus-per-host must be a count, got '$gpus_per_host'"
if [[ $num_processes -gt 1 ]]; then
  need "$coordinator" --coordinator-address
  [[ $coordinator =~ ^[^:[:space:]]+:[0-9]+$ ]] \
    || die "--coordinator-address must be HOST:PORT, got '$coordinator'"
  if [[ $workdir != gs://* && $workdir != /* ]]; then
    die "--workdir '$workdir' is relative; with $num_processes hosts it must be an absolute path on a shared filesystem or a gs:// path"
  fi
fi
if [[ $DRY_RUN != 1 && ! -x $venv/bin/python ]]; then
  die "no virtualenv at $venv (docs/launching.md shows the install command)"
fi

env_vars=()
if [[ $num_processes -gt 1 ]]; then
  env_vars+=(REW_JAX_DISTRIBUTED=1 "REW_JAX_COORDINATOR_ADDRESS=$coordinator"
    "REW_JAX_NUM_PROCESSES=$num_processes" "REW_JAX_PROCESS_ID=$process_id")
else
  env_vars+=(REW_JAX_DISTRIBUTED=0)
fi
if [[ $gpus_per_host -gt 0 ]]; then
  # Without this, JAX under SLURM restricts each process to GPU $SLURM_LOCALID only.
  env_vars+=("JAX_LOCAL_DEVICE_IDS=$(seq -s, 0 $((gpus_per_host - 1)))")
fi
# exec: SIGTERM from the scheduler (time limit, preemption) reaches the training process.
run --exec env "${env_vars[@]}" "$venv/bin/python" -m rew_jax train \
  --config "$config" --workdir "$workdir" ${train_args[@]+"${train_args[@]}"}
