"""Data: tokenizers, preprocessing ops, the task mixture, Grain pipelines, TFDS sources.

    from rew_jax import data
    ds = data.train_dataset("W/records", batch_size=32, pp=data.DEFAULT_TRAIN_PP)
    tok = data.load_tokenizer("bert")
    preprocess = data.get_preprocess("decode|resize(224)|normalize('clip')")

REW records themselves are `rew_jax.records` (read_records, write_records, RecordSource).
Names load on first use.
"""

from rew_jax import registry as _registry

_NAMES = {
    "train_dataset": ".pipeline",
    "DEFAULT_TRAIN_PP": ".pipeline",
    "DEFAULT_EVAL_PP": ".pipeline",
    "get_preprocess": ".ops",
    "load_tokenizer": ".tokenizers",
    "TaskMixture": ".tasks",
    "Task": ".tasks",
}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = _registry.lazy_names(__name__, _NAMES)
