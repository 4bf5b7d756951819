"""The evaluator contract, shared by the train loop and `python -m rew_jax eval`.

An evaluator is built from its config block with an injected, pure prediction function and
its data, and `run(params)` yields `(metric_name, value)` pairs:

    evaluator = EVALUATORS.get("oven")(predict_fn, references=[...], image_dir=..., ...)
    for name, value in evaluator.run(params, step=1000):
      writer.scalar(name, value, step)

On several processes (hosts), `predict_all` gives each process its share of the examples
(p, p+P, ...), runs the prediction on global batches over the parameters' mesh, and gathers
the outputs so that every process holds all of them in example order; only process 0
writes files (`output_dir` is None elsewhere). Metrics are computed the same everywhere.

`predict_fn(params, batch, **kw) -> outputs` is a pure function of the parameters and a
batch of numpy arrays (`mask` int32 [B] marks real examples; padding examples repeat a real
one so that every batch has the same shape and a jitted function compiles once). Outputs
are a dict of arrays with batch-leading dimension; which keys an evaluator reads is part of
its own docstring. Each evaluator writes its predictions and a per-example table under
`<workdir>/eval/<name>/[step_<step>/]` so that errors can be inspected.

A training config holds its evaluators as a dict of blocks:

    config.evals.oven_val = dict(type="oven", pred="decode_rows", every=500, ...)

`from_config(config.evals, predict_fns, workdir=...)` builds them; `pred` names an entry of
`predict_fns`; `type` names a registered evaluator; `every` (steps) is for the train loop and
is not passed on (0: never during training, only by `python -m rew_jax eval`: a test
split's evaluator); every other key is a keyword argument of the evaluator's constructor, so
an unknown key fails there, loudly. `from_train_config(config, model, workdir=...)` does the
same for a train config, with the registered model's prediction functions (configured by
`config.predict`), and pairs each evaluator with its `every`.
"""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import jax
from jax.experimental import multihost_utils
import numpy as np

from rew_jax import sharding
from rew_jax import storage
from rew_jax.errors import ConfigError
from rew_jax.registry import EVALUATORS

PredictFn = Callable[..., Mapping[str, Any]]
# Keys of a config block consumed here or by the train loop, not by the evaluator itself.
LOOP_KEYS = ("type", "pred", "every")


class Evaluator:
  """Base class: subclasses implement `run`. `name` prefixes metric names and file paths."""

  name: str = "eval"
  workdir: str | None = None

  def run(self, params, *, step: int | None = None) -> Iterator[tuple[str, float]]:
    raise NotImplementedError

  def output_dir(self, step: int | None = None) -> str | None:
    """Where this run's files go (created), or None when the evaluator has no workdir or
    runs on a process other than 0 (which alone writes a multi-host run's files)."""
    if not self.workdir or jax.process_index() != 0:
      return None
    parts = [self.workdir, "eval", self.name] + ([f"step_{step}"] if step is not None else [])
    path = os.path.join(*parts)
    storage.makedirs(path)
    return path


def from_config(evals: Mapping[str, Any], predict_fns: Mapping[str, PredictFn], *,
                workdir: str | None = None, **shared) -> dict[str, Evaluator]:
  """name → evaluator for every block of `evals` (see the module docstring).

  `shared` keyword arguments (e.g. a tokenizer) go to every evaluator that accepts them.
  """
  out = {}
  for name, block in evals.items():
    block = dict(block)
    if "type" not in block:
      raise ConfigError(f"evals.{name}: missing 'type' (one of {', '.join(EVALUATORS.names())})")
    cls = EVALUATORS.get(block["type"])
    pred = block.get("pred", "predict")
    if pred not in predict_fns:
      raise ConfigError(f"evals.{name}.pred={pred!r} is not a prediction function of this "
                        f"model; known: {', '.join(sorted(predict_fns)) or '(none)'}")
    kwargs = {k: v for k, v in block.items() if k not in LOOP_KEYS}
    accepted = getattr(cls, "SHARED_KWARGS", ())
    kwargs.update({k: v for k, v in shared.items() if k in accepted and k not in kwargs})
    try:
      out[name] = cls(predict_fns[pred], name=name, workdir=workdir, **kwargs)
    except TypeError as e:
      raise ConfigError(f"evals.{name} ({block['type']}): {e}") from None
  return out


def from_train_config(config, model, *, workdir: str | None = None, training: bool = True
                      ) -> dict[str, tuple[Evaluator, int]]:
  """name → (evaluator, every) for the `evals` of a train config; empty when it has none.

  `model` is the registered model (rew_jax.models.base.Model) whose `predict_fns` the
  evaluators call; `every` defaults to config.total_steps (evaluate at the end only).

  `training` (the train loop): a block with `every=0` is left out, it runs only from
  `python -m rew_jax eval` (`training=False`), which runs every block. An evaluator that
  holds a test split (`holds_test`, e.g. OVEN test references) must be such a block, and
  early stopping may not watch one: selection sees validation only.
  """
  evals = config.get("evals")
  if not evals:
    return {}
  every = {name: int(block.get("every", config.total_steps)) for name, block in evals.items()}
  if training:
    metric = (config.get("early_stopping") or {}).get("metric", "")
    watched = metric.split("/", 1)[0]
    if watched in every and every[watched] <= 0:
      raise ConfigError(f"early_stopping.metric={metric!r} watches evals.{watched}, which has "
                        "every=0 (evaluated only by `eval`, never during training)")
    evals = {name: block for name, block in evals.items() if every[name] > 0}
  fns = model.predict_fns(config.get("predict"))
  evaluators = from_config(evals, fns, workdir=workdir)
  if training:
    for name, ev in evaluators.items():
      if getattr(ev, "holds_test", False):
        raise ConfigError(f"evals.{name} holds a test split: it may not run during training "
                          "(selection and early stopping see validation only); set "
                          f"evals.{name}.every=0 and run it with `python -m rew_jax eval`")
  return {name: (ev, every[name]) for name, ev in evaluators.items()}


# --------------------------------------------------------------------------------------------
# Batching: fixed-shape batches of preprocessed examples, padding marked by `mask`.
# --------------------------------------------------------------------------------------------


def batches(examples: Sequence[Any], batch_size: int, load: Callable[[Any], dict[str, Any]]
            ) -> Iterator[tuple[list[Any], dict[str, np.ndarray]]]:
  """Yields (the batch's source items, stacked arrays) with every batch `batch_size` long.

  `load(item)` returns one preprocessed example; its array-valued keys are stacked, the
  rest (strings) dropped. The last batch is padded with copies of its first example and
  `mask` 0, so the prediction function sees one shape only.
  """
  if batch_size < 1:
    raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
  for start in range(0, len(examples), batch_size):
    items = list(examples[start:start + batch_size])
    loaded = [load(item) for item in items]
    keys = [k for k, v in loaded[0].items()
            if isinstance(v, (np.ndarray, np.generic, int, float)) and not k.startswith("_")]
    pad = batch_size - len(loaded)
    loaded += [loaded[0]] * pad
    batch = {k: np.stack([np.asarray(ex[k]) for ex in loaded]) for k in keys}
    batch["mask"] = np.array([1] * len(items) + [0] * pad, np.int32)
    yield items, batch


def predict_all(predict_fn: PredictFn, params, examples: Sequence[Any], batch_size: int,
                load: Callable[[Any], dict[str, Any]], **kwargs) -> dict[str, np.ndarray]:
  """`predict_fn`'s outputs for every example, in example order, as host numpy arrays.

  One process: fixed-shape batches of `batch_size` (see `batches`). Several: process p
  predicts examples p, p+P, ... in batches of `batch_size` (every process the same number
  of batches, padding masked), each batch a global array over the mesh of `params`, and the
  outputs of all processes are gathered onto every process.
  """
  if jax.process_count() == 1:
    parts = [to_numpy(predict_fn(params, batch, **kwargs), len(items))
             for items, batch in batches(examples, batch_size, load)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
  p, count = jax.process_index(), jax.process_count()
  mine = list(range(p, len(examples), count))
  num_batches = max(1, -(-(-(-len(examples) // count)) // batch_size))
  meshes = [x.sharding.mesh for x in jax.tree.leaves(params)
            if isinstance(getattr(x, "sharding", None), jax.sharding.NamedSharding)]
  if not meshes:
    raise ValueError("predicting on several processes needs parameters placed on a mesh "
                     "(jax.Arrays with a NamedSharding, as model_setup places them)")
  mesh = meshes[0]
  rows: dict[str, list] = {}
  order = []
  for b in range(num_batches):
    index = mine[b * batch_size:(b + 1) * batch_size]
    # A process with no examples left still joins the collective, on a masked example.
    _, batch = next(batches([examples[i] for i in index] or [examples[0]], batch_size, load))
    ids = np.full(batch_size, -1, np.int32)
    ids[:len(index)] = index
    batch["_index"] = ids
    global_batch = sharding.host_batch_to_global(batch, mesh)
    ids = global_batch.pop("_index")
    outputs = predict_fn(params, global_batch, **kwargs)
    # Gathered whole onto every process, rows in the global batch's order.
    gathered = multihost_utils.process_allgather({"_index": ids, **outputs}, tiled=True)
    order.append(np.asarray(gathered.pop("_index")))
    for key, value in gathered.items():
      rows.setdefault(key, []).append(np.asarray(value))
  order = np.concatenate(order)
  keep = order >= 0
  position = np.argsort(order[keep], kind="stable")
  return {k: np.concatenate(v)[keep][position] for k, v in rows.items()}


def to_numpy(outputs: Mapping[str, Any], n: int) -> dict[str, np.ndarray]:
  """Device outputs → host numpy, cut to the `n` real (leading) examples of the batch."""
  return {k: np.asarray(v)[:n] for k, v in outputs.items()}


# --------------------------------------------------------------------------------------------
# Files.
# --------------------------------------------------------------------------------------------


def write_jsonl(path: str, rows: Iterable[Mapping[str, Any]]) -> str:
  """Writes rows atomically (rew_jax.storage: local or gs://), one JSON object per line."""
  return storage.write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n"
                                          for row in rows))


def write_table(path: str, rows: Sequence[Mapping[str, Any]],
                columns: Sequence[str] | None = None) -> str:
  """A tab-separated per-example table (opens in any spreadsheet or `column -t`)."""
  if columns is None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
  out = io.StringIO(newline="")
  writer = csv.writer(out, delimiter="\t", lineterminator="\n")
  writer.writerow(columns)
  for row in rows:
    writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
  return storage.write_text(path, out.getvalue())


def write_metrics(path: str, metrics: Mapping[str, Any]) -> str:
  return storage.write_text(path, json.dumps(dict(metrics), indent=1, sort_keys=True))
