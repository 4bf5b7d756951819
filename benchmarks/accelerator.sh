#!/usr/bin/env bash
# The accelerator figures in one run, under 8 minutes on one H100/H200-class GPU:
#   1. GiT-Large bf16 train step, batch 64: step time, MFU, peak device memory; then beam-4
#      decoding throughput of GiT-Large (benchmarks/model.py --mfu);
#   2. the input pipeline's images/s on the host's cores (benchmarks/input_pipeline.py);
#   3. top-k over 6M × 384 entities for 65,536 queries, on the accelerator
#      (benchmarks/retrieval.py; faiss on the CPU is skipped: hours at this size).
#
#   bash benchmarks/accelerator.sh [--out DIR]            # on the accelerator machine
#   bash benchmarks/accelerator.sh --dry-run [--out DIR]  # the same steps at toy sizes on CPU
#
# Each step's output goes to DIR/<step>.log (default /tmp/rew_jax_accelerator); the last
# stdout line is one JSON object with every step's own JSON line.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=/tmp/rew_jax_accelerator
DRY=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    --out) OUT="$2"; shift 2 ;;
    *) echo "accelerator.sh: unknown argument $1 (--dry-run, --out DIR)" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
CORES=$(nproc)
if [[ $DRY == 1 ]]; then
  MODEL=(--mfu --quick --batch 4 --decode-batch 2 --steps 1)
  INPUT=(--records 64 --batches 2 --batch-size 16 --image-size 96 --workers -1 --rounds 1)
  TOPK=(--entities 4096 --queries 256 --chunk-rows 2048 --query-block 128 --rounds 1
        --no-baseline --skip encoder,kb,world)
else
  MODEL=(--mfu --batch 64 --decode-batch 64)
  INPUT=(--records 1024 --batches 20 --workers "-1,0,$((CORES / 2))" --rounds 1)
  TOPK=(--entities 6000000 --queries 65536 --chunk-rows 262144 --query-block 8192 --rounds 2
        --no-baseline --resident-gib 16 --skip encoder,kb,world)
fi

step() {  # step NAME SCRIPT ARGS...: runs it, keeps its log, prints its last (JSON) line.
  local name=$1; shift
  echo "== $name: $PY $*" >&2
  local start=$SECONDS
  "$PY" "$@" > "$OUT/$name.log" 2> "$OUT/$name.err" || {
    echo "accelerator.sh: step $name failed; the end of $OUT/$name.err:" >&2
    tail -n 30 "$OUT/$name.err" >&2
    exit 1
  }
  tail -n 1 "$OUT/$name.log" > "$OUT/$name.json"
  echo "   $name: $((SECONDS - start)) s" >&2
}

step train_decode benchmarks/model.py "${MODEL[@]}"
step input_pipeline benchmarks/input_pipeline.py "${INPUT[@]}"
step topk benchmarks/retrieval.py "${TOPK[@]}"
"$PY" - "$OUT" "$DRY" <<'PYEOF'
import json, os, sys, time
out, dry = sys.argv[1], sys.argv[2] == "1"
steps = {n: json.load(open(os.path.join(out, f"{n}.json")))
         for n in ("train_decode", "input_pipeline", "topk")}
print(json.dumps({"benchmark": "accelerator", "dry_run": dry,
                  "date": time.strftime("%Y-%m-%d"), **steps}))
PYEOF
