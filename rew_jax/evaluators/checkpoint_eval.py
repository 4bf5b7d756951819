"""Evaluating a training run's checkpoint with its config's evaluators.

    results = checkpoint_eval.evaluate(config.train, workdir)           # the latest step
    results = checkpoint_eval.evaluate(config.train, workdir, step=500)

Every `evals` block runs, also those with `every=0` that training leaves out (a test
split's evaluator: its predictions are the submission files). The model is built and placed
as the train loop places it (`model_setup.setup_model`); only
the checkpoint's parameters are read, straight onto their shardings. The evaluators are the
train config's `evals` blocks, predicting with the model's functions configured by
`config.predict`; their files go to `<workdir>/eval/<name>/step_<step>/` as in training.

A frozen feature model (DINOv2, CLIP's image embedding: configs/knn_matching.py) is never
trained: its config says `total_steps=0` and its parameters are `init_from`'s, loaded by the
`eval` stage (which owns the train loop's `init_from`) and passed to `evaluate_params`.
"""

from __future__ import annotations

import os

from rew_jax import checkpoint
from rew_jax import model_setup
from rew_jax import sharding
from rew_jax.errors import ConfigError, UserError
from rew_jax.evaluators import common


def evaluate(config, workdir: str, step: int | None = None) -> dict[str, float]:
  """Runs `config.evals` on the parameters of `workdir`'s checkpoint `step` (default: the
  latest); returns {metric name: value} over all evaluators (names carry their prefix)."""
  if not config.get("evals"):
    raise ConfigError("the config has no `evals` block to evaluate with")
  if step is None:
    step = checkpoint.latest_step(workdir)
    if step is None:
      raise UserError(f"{workdir}: no checkpoint to evaluate")
  setup = model_setup.setup_model(config, init=False)
  params = checkpoint.load_params(os.path.join(workdir, "checkpoints", str(step)),
                                  setup.abstract_params)
  return evaluate_params(config, setup, params, workdir, step)


def evaluate_params(config, setup: model_setup.ModelSetup, params, workdir: str,
                    step: int) -> dict[str, float]:
  """Runs `config.evals` on `params` (placed by `setup`); files under the step `step`."""
  if not config.get("evals"):
    raise ConfigError("the config has no `evals` block to evaluate with")
  results = {}
  with sharding.use(setup.mesh, setup.rules):
    for evaluator, _ in common.from_train_config(config, setup.model, workdir=workdir,
                                                 training=False).values():
      results.update(evaluator.run(params, step=step))
  return results
