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

from rew_jax import registry as _registry

# name → "module:attribute".
_NAMES = {
    "OvenEvaluator": ".oven:Evaluator",
    "ZeroshotEvaluator": ".zeroshot:Evaluator",
    "KnnMatchingEvaluator": ".knn_matching:Evaluator",
    "score": ".oven_metric",
    "score_files": ".oven_metric",
    "Evaluator": ".common",
    "InputOptions": ".common",
    "from_config": ".common",
    "from_train_config": ".common",
    "predict_all": ".common",
    "predict_source": ".common",
    "eval_input": "rew_jax.data.pipeline",
}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = _registry.lazy_names(__name__, _NAMES)
