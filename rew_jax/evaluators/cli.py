"""`python -m rew_jax eval`: score OVEN prediction files, or evaluate a checkpoint.

    # Two files (or several of each) → one JSON object on stdout:
    python -m rew_jax eval oven --references oven_entity_val.jsonl oven_query_val.jsonl \
        --predictions pred_entity.jsonl pred_query.jsonl

    # A training run's latest (or --step N) checkpoint, with the config's evaluators:
    python -m rew_jax eval --config configs/oven_finetune.py --workdir W
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from rew_jax.evaluators import oven_metric


def _oven_main(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m rew_jax eval oven",
      description="Score OVEN predictions against references with the official conventions "
                  "(and the strict variant where a missing prediction counts as wrong).")
  parser.add_argument("--references", nargs="+", required=True,
                      help="reference jsonl file(s), e.g. oven_entity_val.jsonl "
                           "oven_query_val.jsonl")
  parser.add_argument("--predictions", nargs="+", required=True,
                      help='prediction jsonl file(s): {"data_id": ..., "pred_entity_id": ...}')
  parser.add_argument("--indent", type=int, default=None, help="pretty-print the JSON")
  args = parser.parse_args(list(argv))
  result = oven_metric.score_files(args.references, args.predictions)
  print(json.dumps(result, indent=args.indent, sort_keys=True))
  return 0


def _checkpoint_main(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m rew_jax eval",
      description="Evaluate a training run's checkpoint with its config's evaluators, or "
                  "`eval oven --references ... --predictions ...` to score prediction files.")
  parser.add_argument("--config", required=True, help="configs/<recipe>.py[:arg]")
  parser.add_argument("--workdir", required=True, help="the training run's workdir")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  from rew_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from rew_jax.evaluators import checkpoint_eval  # pylint: disable=g-import-not-at-top
  args, config = config_lib.parse_stage_args(parser, argv)
  results = checkpoint_eval.evaluate(config, args.workdir, args.step)
  print(json.dumps(results, sort_keys=True))
  return 0


def main(argv: Sequence[str]) -> int:
  argv = list(argv)
  if argv and argv[0] == "oven":
    return _oven_main(argv[1:])
  return _checkpoint_main(argv)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
