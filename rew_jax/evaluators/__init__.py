"""Evaluators: OVEN (+ its official scorer), zero-shot fine-grained transfer, kNN matching.

    from rew_jax import evaluators
    result = evaluators.score_files(["oven_entity_val.jsonl"], ["pred_entity.jsonl"])
    evaluator = evaluators.OvenEvaluator(predict_fn, references=[...], image_dir=...)
    metrics = dict(evaluator.run(params))
    built = evaluators.from_config(config.evals, predict_fns, workdir=W)
    batches, num_batches = evaluators.eval_input(source, pp, batch_size=64)

The names below are imported on first use, so `import rew_jax.evaluators` stays light (no
JAX model code, no tensorflow_datasets); the modules themselves are `rew_jax.evaluators.oven`
and so on. `rew_jax.registry.EVALUATORS` resolves the same classes by their config names
("oven", "zeroshot", "knn_matching").
"""

from __future__ import annotations

import importlib
from typing import Any

# name → (module, attribute).
_PUBLIC = {
    "OvenEvaluator": ("rew_jax.evaluators.oven", "Evaluator"),
    "ZeroshotEvaluator": ("rew_jax.evaluators.zeroshot", "Evaluator"),
    "KnnMatchingEvaluator": ("rew_jax.evaluators.knn_matching", "Evaluator"),
    "score": ("rew_jax.evaluators.oven_metric", "score"),
    "score_files": ("rew_jax.evaluators.oven_metric", "score_files"),
    "Evaluator": ("rew_jax.evaluators.common", "Evaluator"),
    "InputOptions": ("rew_jax.evaluators.common", "InputOptions"),
    "from_config": ("rew_jax.evaluators.common", "from_config"),
    "from_train_config": ("rew_jax.evaluators.common", "from_train_config"),
    "predict_all": ("rew_jax.evaluators.common", "predict_all"),
    "eval_input": ("rew_jax.data.pipeline", "eval_input"),
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
  if name not in _PUBLIC:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  module, attribute = _PUBLIC[name]
  value = getattr(importlib.import_module(module), attribute)
  globals()[name] = value  # Later lookups skip this function.
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_PUBLIC))
