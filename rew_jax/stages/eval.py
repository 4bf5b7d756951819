"""`python -m rew_jax eval`: evaluate a checkpoint, or score OVEN prediction files.

    # A training run's latest (or --step N) checkpoint, with its config's evaluators:
    python -m rew_jax eval --config configs/oven_finetune.py --workdir W
    # The step with the best early_stopping.metric (kept beside the newest ones):
    python -m rew_jax eval --config configs/oven_finetune.py --workdir W --step best

    # Two files (or several of each) → one JSON object on stdout:
    python -m rew_jax eval oven --references oven_entity_val.jsonl oven_query_val.jsonl \
        --predictions pred_entity.jsonl pred_query.jsonl

A checkpoint is evaluated with the `train` section of its config (its model, `evals` and
`predict` blocks); evaluator outputs go to W/eval/<name>/step_<step>/. On several hosts
(launch/, docs/launching.md) each predicts its share of the examples, and process 0 alone
writes the files and prints the metrics.
"""

from __future__ import annotations

import json
from typing import Sequence

from rew_jax import checkpoint
from rew_jax import config as config_lib
from rew_jax import distributed
from rew_jax import train as train_lib
from rew_jax.evaluators import checkpoint_eval
from rew_jax.evaluators import oven_metric
from rew_jax.stages import base


def _oven_main(argv: Sequence[str]) -> int:
  p = base.parser("eval oven", "Score OVEN predictions against references with the official "
                  "conventions (and the strict variant where a missing prediction counts as "
                  "wrong).")
  p.add_argument("--references", nargs="+", required=True,
                 help="reference jsonl file(s), e.g. oven_entity_val.jsonl oven_query_val.jsonl")
  p.add_argument("--predictions", nargs="+", required=True,
                 help='prediction jsonl file(s): {"data_id": ..., "pred_entity_id": ...}')
  p.add_argument("--indent", type=int, default=None, help="pretty-print the JSON")
  args = p.parse_args(list(argv))
  result = oven_metric.score_files(args.references, args.predictions)
  print(json.dumps(result, indent=args.indent, sort_keys=True))
  return 0


def _step(value: str | None, config, workdir: str) -> int | None:
  """--step: None (the latest), a number, or "best"."""
  if value is None or value.isdigit():
    return None if value is None else int(value)
  if value != "best":
    raise config_lib.ConfigError(f"--step {value!r}: a step number or 'best'")
  metric = config.early_stopping.metric
  if not metric:
    raise config_lib.ConfigError("--step best needs early_stopping.metric in the train config")
  return checkpoint.best_step(workdir, metric, config.early_stopping.mode)


def _checkpoint_main(argv: Sequence[str]) -> int:
  p = base.parser("eval", __doc__)
  base.add_config(p, required=True, sections="train")
  base.add_workdir(p, "the training run's workdir")
  p.add_argument("--step", default=None,
                 help="checkpoint step, or 'best' (the step with the best value of the "
                      "config's early_stopping.metric); default: the latest")
  args, config = base.parse(p, argv)
  section = train_lib.with_defaults(config_lib.section(
      config, "train", train_lib.default_config(), source=args.config_source))
  step = _step(args.step, section, args.workdir)
  results = checkpoint_eval.evaluate(section, args.workdir, step)
  if distributed.process_index() == 0:  # Several hosts: each predicted a share; one reports.
    print(json.dumps(results, sort_keys=True))
  return 0


def main(argv: Sequence[str]) -> int:
  argv = list(argv)
  if argv and argv[0] == "oven":
    return _oven_main(argv[1:])
  return _checkpoint_main(argv)
