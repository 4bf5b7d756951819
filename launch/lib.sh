# Sourced by the launch scripts (tpu_vm.sh, run_tpu.sh, gpu_multihost.sh, slurm_gpu.sbatch).
# They stay within bash 3.2 (macOS's /bin/bash), e.g. ${a[@]+"${a[@]}"} for arrays that may be
# empty under `set -u`.
# Every external command (gcloud, ssh, srun, git archive, python) goes through `run`, so that
# `--dry-run` prints exactly what would be executed, one shell-quoted line per command,
# which can be pasted into a terminal as it is.
# shellcheck shell=bash

DRY_RUN=${DRY_RUN:-0}
PROG=$(basename "$0")

# Prints an error naming the script and what was wrong, then exits with status 2.
die() {
  echo "$PROG: error: $*" >&2
  echo "Run '$PROG --help' for the options." >&2
  exit 2
}

# Quotes one argument as a shell word; plain words stay unquoted for readability.
# `~` is quoted too: the commands never rely on tilde expansion.
# An option's value is quoted on its own (--command='a b'), which reads better than
# quoting the whole word; bash leaves `{}` (find's placeholder) as it is.
quote_word() {
  local word=$1
  if [[ $word == '{}' || ( -n $word && $word =~ ^[A-Za-z0-9_./:=,@%+-]+$ ) ]]; then
    printf '%s' "$word"
  elif [[ $word =~ ^(--[A-Za-z0-9-]+=)(.+)$ ]]; then
    printf '%s' "${BASH_REMATCH[1]}"
    quote_word "${BASH_REMATCH[2]}"
  else
    printf "'%s'" "${word//\'/\'\\\'\'}"
  fi
}

# Joins arguments into one shell command line.
quote_cmd() {
  local out="" word
  for word in "$@"; do
    out+="${out:+ }$(quote_word "$word")"
  done
  printf '%s' "$out"
}

# run [--exec] CMD ARGS...: under --dry-run print the command line on stdout; otherwise log it
# on stderr and execute it (`--exec` replaces the shell, so signals such as a preemption
# SIGTERM reach the training process directly).
run() {
  local replace=0
  if [[ ${1:-} == --exec ]]; then replace=1; shift; fi
  if [[ $DRY_RUN == 1 ]]; then
    quote_cmd "$@"
    printf '\n'
    return 0
  fi
  echo "+ $(quote_cmd "$@")" >&2
  if [[ $replace == 1 ]]; then exec "$@"; fi
  "$@"
}

# need VALUE OPTION: fails when a required option was not given.
need() {
  [[ -n $1 ]] || die "missing required option $2"
}

# need_value "$@": the option in $1 must be followed by a value (not by another option).
need_value() {
  [[ $# -ge 2 && $2 != --* ]] || die "option $1 needs a value"
}

# is_count VALUE: a positive integer.
is_count() {
  [[ $1 =~ ^[1-9][0-9]*$ ]]
}
