#!/usr/bin/env bash
# Cloud TPU VMs and pod slices: create one, copy this repository to every worker, install it,
# and start training on all workers at once (one process per host, launch/run_tpu.sh).
# Run `launch/tpu_vm.sh --help` for the actions and options; add --dry-run to print the exact
# gcloud commands without running them. docs/launching.md walks through a v4-32 run.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=launch/lib.sh
source launch/lib.sh

usage() {
  cat <<'EOF'
usage: launch/tpu_vm.sh ACTION --project P --zone Z --tpu-name NAME [options] [-- TRAIN_ARGS...]

Actions:
  create   create the TPU VM or pod slice (gcloud compute tpus tpu-vm create)
  setup    copy the committed code (git archive of --ref) to every worker and install it
           into a virtualenv there: pip install -e . with the pinned jax and its TPU runtime
  train    start launch/run_tpu.sh on every worker (ssh --worker=all), which runs
           python -m rew_jax train --config SPEC --workdir DIR
  all      create, setup, then train
  delete   delete the TPU VM or pod slice

Required:
  --project P            Google Cloud project
  --zone Z               zone of the TPU, e.g. us-central2-b (v4), us-east5-a (v5p)
  --tpu-name NAME        name of the TPU VM / pod slice
  --accelerator-type T   e.g. v4-8, v4-32, v5p-128 (for create and all; for train it
                         gives the host count unless --num-hosts is given)
  --config SPEC          training config, e.g. configs/git_large_rew.py:variant (train, all)
  --workdir DIR          checkpoints, metrics and logs; a gs:// path on pods (train, all)

Options:
  --runtime-version V    TPU software version; by default chosen from the accelerator type:
                         v2/v3/v4 tpu-ubuntu2204-base, v5p v2-alpha-tpuv5,
                         v5litepod v2-alpha-tpuv5-lite, v6e v2-alpha-tpuv6e
  --num-hosts N          workers in the slice (default: from the accelerator type; if both
                         are given they must agree)
  --spot                 create a Spot TPU (preemptible; training resumes from --workdir)
  --ref REF              git revision to copy (default HEAD; uncommitted edits are not copied)
  --remote-dir DIR       code directory on each worker, relative to the home directory
                         (default rew_jax); its virtualenv is DIR/.venv
  --python EXE           Python 3.11+ used to create the virtualenv (default python3.11,
                         installed with apt-get when missing)
  --detach               keep training running after ssh returns (nohup); each worker logs
                         to DIR/train.log
  --dry-run              print the commands instead of running them
  -h, --help             this help

Anything after `--` goes to `python -m rew_jax train`, e.g. -- --config.train.total_steps=1000
EOF
}

# Workers per slice from the accelerator type: v2-v4 and v5p count TensorCores (8 per host);
# v5litepod and v6e count chips (up to 8 on one host, 4 per host in multi-host slices).
hosts_for_type() {
  local gen=${1%-*} size=${1##*-}
  is_count "$size" || return 1
  case $gen in
    v2|v3|v4|v5p) echo $(( size <= 8 ? 1 : size / 8 )) ;;
    v5litepod|v6e) echo $(( size <= 8 ? 1 : size / 4 )) ;;
    *) return 1 ;;
  esac
}

runtime_for_type() {
  case $1 in
    v2-*|v3-*|v4-*) echo tpu-ubuntu2204-base ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) return 1 ;;
  esac
}

# ------------------------------------------------------------------ arguments
[[ $# -ge 1 ]] || { usage >&2; exit 2; }
case $1 in
  -h|--help) usage; exit 0 ;;
  create|setup|train|all|delete) action=$1; shift ;;
  *) die "unknown action '$1' (expected create, setup, train, all or delete)" ;;
esac

project="" zone="" tpu_name="" accelerator_type="" runtime_version="" num_hosts=""
config="" workdir="" ref=HEAD remote_dir=rew_jax python=python3.11 spot=0 detach=0
train_args=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;
  esac
  case $1 in
    --project) need_value "$@"; project=$2; shift 2 ;;
    --zone) need_value "$@"; zone=$2; shift 2 ;;
    --tpu-name) need_value "$@"; tpu_name=$2; shift 2 ;;
    --accelerator-type) need_value "$@"; accelerator_type=$2; shift 2 ;;
    --runtime-version) need_value "$@"; runtime_version=$2; shift 2 ;;
    --num-hosts) need_value "$@"; num_hosts=$2; shift 2 ;;
    --config) need_value "$@"; config=$2; shift 2 ;;
    --workdir) need_value "$@"; workdir=$2; shift 2 ;;
    --ref) need_value "$@"; ref=$2; shift 2 ;;
    --remote-dir) need_value "$@"; remote_dir=$2; shift 2 ;;
    --python) need_value "$@"; python=$2; shift 2 ;;
    --spot) spot=1; shift ;;
    --detach) detach=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; train_args=("$@"); break ;;
    *) die "unknown option '$1' (training overrides go after --)" ;;
  esac
done

need "$project" --project
need "$zone" --zone
need "$tpu_name" --tpu-name
if [[ $action == create || $action == all ]]; then
  need "$accelerator_type" --accelerator-type
fi
if [[ $action == train || $action == all ]]; then
  need "$config" --config
  need "$workdir" --workdir
fi
# The code directory is emptied before each copy: keep it strictly below the home directory.
remote_dir=${remote_dir%/}
[[ $remote_dir =~ ^[A-Za-z0-9_][A-Za-z0-9_./-]*$ && ! $remote_dir =~ (^|/)\.\.(/|$) ]] \
  || die "--remote-dir must be a relative path below the home directory, got '$remote_dir'"

if [[ -n $accelerator_type ]]; then
  type_hosts=$(hosts_for_type "$accelerator_type") \
    || die "unknown --accelerator-type '$accelerator_type' (expected e.g. v4-32, v5p-128, v5litepod-16, v6e-8)"
  if [[ -z $runtime_version ]]; then
    runtime_version=$(runtime_for_type "$accelerator_type")
  fi
  if [[ -n $num_hosts && $num_hosts != "$type_hosts" ]]; then
    die "--num-hosts $num_hosts does not match --accelerator-type $accelerator_type ($type_hosts hosts)"
  fi
  num_hosts=$type_hosts
fi
if [[ $action == train || $action == all ]]; then
  need "$num_hosts" "--num-hosts (or --accelerator-type)"
  is_count "$num_hosts" || die "--num-hosts must be a positive integer, got '$num_hosts'"
  # Every host writes its shards of each checkpoint: the workdir must be shared storage.
  if [[ $num_hosts -gt 1 && $workdir != gs://* && $workdir != /* ]]; then
    die "--workdir '$workdir' is local to each worker; a ${num_hosts}-host slice needs a gs:// path (or an absolute path on a shared mount)"
  fi
fi

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=("--zone=$zone" "--project=$project")

# Runs one shell command line on every worker of the slice.
on_all_workers() {
  run "${gcloud_tpu[@]}" ssh "$tpu_name" "${where[@]}" --worker=all "--command=$1"
}

# ------------------------------------------------------------------ actions
do_create() {
  local flags=("--accelerator-type=$accelerator_type" "--version=$runtime_version")
  if [[ $spot == 1 ]]; then flags+=(--spot); fi
  run "${gcloud_tpu[@]}" create "$tpu_name" "${where[@]}" "${flags[@]}"
}

do_setup() {
  # The jax pin comes from constraints.txt so that the TPU runtime matches the tested stack.
  local jax_version
  jax_version=$(sed -n 's/^[[:space:]]*jax==\([0-9][0-9.]*\)[[:space:]]*$/\1/p' constraints.txt)
  [[ -n $jax_version ]] || die "constraints.txt has no 'jax==VERSION' pin"
  if [[ -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    echo "$PROG: note: uncommitted changes are not copied (git archive $ref)" >&2
  fi
  local tarball="${TMPDIR:-/tmp}/rew_jax-$tpu_name.tar.gz" remote_tar="$remote_dir.tar.gz"
  run git archive --format=tar.gz -o "$tarball" "$ref"
  run "${gcloud_tpu[@]}" scp "$tarball" "$tpu_name:$remote_tar" "${where[@]}" --worker=all
  # Replace the code but keep the virtualenv, so that a re-copy does not reinstall from scratch.
  on_all_workers "$(quote_cmd mkdir -p "$remote_dir") && \
$(quote_cmd find "$remote_dir" -mindepth 1 -maxdepth 1 -not -name .venv -exec rm -rf '{}' +) && \
$(quote_cmd tar -xzf "$remote_tar" -C "$remote_dir") && $(quote_cmd rm -f "$remote_tar")"
  # The runtime images ship Ubuntu 22.04's Python 3.10; rew_jax needs 3.11+. When the venv
  # cannot be made (interpreter or its venv module missing), apt-get installs both and retries.
  local make_venv
  make_venv="$(quote_cmd "$python" -m venv .venv)"
  if [[ $python =~ ^python3\.[0-9]+$ ]]; then
    make_venv+=" || { $(quote_cmd sudo apt-get update -q) && \
$(quote_cmd sudo apt-get install -y -q "$python" "$python-venv") && $make_venv; }"
  fi
  local pip=(.venv/bin/python -m pip install -q)
  on_all_workers "$(quote_cmd cd "$remote_dir") && \
{ $(quote_cmd test -x .venv/bin/pip) || $make_venv; } && \
$(quote_cmd "${pip[@]}" --upgrade pip) && \
$(quote_cmd "${pip[@]}" -e . "jax[tpu]==$jax_version" "$GCSFS_PIN")"
}

do_train() {
  local entry=(bash launch/run_tpu.sh --config "$config" --workdir "$workdir" --num-hosts "$num_hosts")
  if [[ ${#train_args[@]} -gt 0 ]]; then entry+=(-- "${train_args[@]}"); fi
  if [[ $detach == 1 ]]; then
    on_all_workers "$(quote_cmd cd "$remote_dir") && $(quote_cmd nohup "${entry[@]}") > train.log 2>&1 < /dev/null &"
  else
    on_all_workers "$(quote_cmd cd "$remote_dir") && $(quote_cmd "${entry[@]}")"
  fi
}

do_delete() {
  run "${gcloud_tpu[@]}" delete "$tpu_name" "${where[@]}" --quiet
}

# gs:// workdirs go through fsspec (orbax, metrics); gcsfs is its Cloud Storage backend.
GCSFS_PIN=${GCSFS_PIN:-gcsfs==2026.10.1}

case $action in
  create) do_create ;;
  setup) do_setup ;;
  train) do_train ;;
  all) do_create; do_setup; do_train ;;
  delete) do_delete ;;
esac
