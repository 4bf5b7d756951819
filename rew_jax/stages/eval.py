"""`python -m rew_jax eval`: evaluate a checkpoint, or score OVEN prediction files.

    # A training run's latest (or --step N) checkpoint, with the config saved beside it:
    python -m rew_jax eval --workdir W
    # The step with the best early_stopping.metric (kept beside the newest ones):
    python -m rew_jax eval --workdir W --step best
    # Another config's train section (its evaluators, predict options) for the same model:
    python -m rew_jax eval --config configs/oven_finetune.py --workdir W

    # Two files (or several of each) → one JSON object on stdout:
    python -m rew_jax eval oven --references oven_entity_val.jsonl oven_query_val.jsonl \
        --predictions pred_entity.jsonl pred_query.jsonl

A config with `total_steps=0` describes a model used as loaded (the frozen feature models
of configs/knn_matching.py): its `init_from` weights are evaluated, no checkpoint is read,
and the files go to W/eval/<name>/step_0/.

A checkpoint is evaluated with the train section saved beside it (its model, `evals` and
`predict` blocks), whatever its config file says now: `rew_jax.load_run` (rew_jax/runs.py)
loads it as research code does. `--config` replaces that section (a model section other
than the saved one is refused, naming the keys); `--config.train.k=v` overrides either.
Evaluator outputs go to W/eval/<name>/step_<step>/. On several hosts
(launch/, docs/launching.md) each predicts its share of the examples, and process 0 alone
writes the files and prints the metrics.
"""

from __future__ import annotations

import json
from typing import Sequence

from rew_jax import checkpoint
from rew_jax import config as config_lib
from rew_jax import distributed
from rew_jax import model_setup
from rew_jax import runs
from rew_jax import train as train_lib
from rew_jax.errors import ConfigError
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


def _checkpoint_main(argv: Sequence[str]) -> int:
  p = base.parser("eval", __doc__)
  base.add_config(p, sections="train")
  base.add_workdir(p, "the training run's workdir")
  p.add_argument("--step", default=None,
                 help="checkpoint step, or 'best' (the step with the best value of the "
                      "config's early_stopping.metric); default: the latest")
  overrides, rest = config_lib.split_overrides(argv)
  args, config = base.parse(p, rest)
  if args.config:  # The file's train section (for the same model), then the overrides.
    config_lib.apply_overrides(config, overrides)
    section = train_lib.with_defaults(config_lib.section(
        config, "train", train_lib.default_config(), source=args.config_source))
  else:  # The config saved with the checkpoint, then the overrides.
    section = None
  if section is not None and section.total_steps == 0:
    results = _evaluate_as_loaded(section, args.workdir)
  else:
    step = runs.resolve_step(args.workdir, args.step, section)
    if section is None:
      saved = config_lib.ConfigDict(dict(train=runs.run_config(args.workdir, step)))
      section = config_lib.apply_overrides(saved, overrides).train
    results = runs.load_run(args.workdir, step, config=section).evaluate()
  if distributed.process_index() == 0:  # Several hosts: each predicted a share; one reports.
    print(json.dumps(results, sort_keys=True))
  return 0


def _evaluate_as_loaded(section, workdir: str) -> dict[str, float]:
  """A model that is not trained here: the parameters `init_from` loads, at step 0."""
  if checkpoint.from_checkpoint(section.init_from) or section.init_from in ("", "none"):
    raise ConfigError(f"total_steps=0 evaluates the weights init_from loads (LOADER:PATH, e.g. "
                      f"hf_dinov2:DIR); init_from is {section.init_from!r}")
  # Shapes only: every weight comes from the loader, none from a random init.
  setup = model_setup.setup_model(section, init=False)
  params = checkpoint.init_from(section.init_from, setup.model, setup.abstract_params,
                                setup.param_shardings)
  return checkpoint_eval.evaluate_params(section, setup, params, workdir, step=0)


def main(argv: Sequence[str]) -> int:
  argv = list(argv)
  if argv and argv[0] == "oven":
    return _oven_main(argv[1:])
  return _checkpoint_main(argv)
