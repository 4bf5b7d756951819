"""The evaluator contract, shared by the train loop and `python -m rew_jax eval`.

An evaluator is built from its config block with an injected, pure prediction function and
its data, and `run(params)` yields `(metric_name, value)` pairs:

    evaluator = EVALUATORS.get("oven")(predict_fn, references=[...], image_dir=..., ...)
    for name, value in evaluator.run(params, step=1000):
      writer.scalar(name, value, step)

Each evaluator declares its options once, as a dataclass (`Options`, extending
`InputOptions`: pp spec, batch size, Grain threads and workers); `default_config()` lists
them with their defaults, and a key it does not list is a ConfigError naming the closest
valid keys, whether it comes from a config block or a Python call.

Data: an evaluator reads a random-access source (OVEN questions, TFDS or on-disk sets, REW
records, a list of examples) through the one evaluation input,
`rew_jax.data.pipeline.eval_input`: Grain threads read, decode and preprocess (the `pp` spec,
the ops of training) ahead of the prediction, into fixed-shape batches. `predict_all`
consumes those batches. On several processes (hosts) each reads its share of the examples
(p, p+P, ...), the prediction runs on global batches over the parameters' mesh, and the
outputs are gathered so that every process holds all of them in example order; only
process 0 writes files (`output_dir` is None elsewhere). Metrics are computed the same
everywhere.

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
split's evaluator); every other key is one of the evaluator's options, checked against its
`default_config()`. `from_train_config(config, model, workdir=...)` does the same for a train
config, with the registered model's prediction functions (configured by `config.predict`),
and pairs each evaluator with its `every`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from typing import Any, Callable, ClassVar, Iterable, Iterator, Mapping, Sequence

import jax
from jax.experimental import multihost_utils
import numpy as np

from rew_jax import config as config_lib
from rew_jax import sharding
from rew_jax import storage
from rew_jax.data import pipeline
from rew_jax.errors import ConfigError
from rew_jax.registry import EVALUATORS

PredictFn = Callable[..., Mapping[str, Any]]
# Keys of a config block consumed here or by the train loop, not by the evaluator itself.
LOOP_KEYS = ("type", "pred", "every")


@dataclasses.dataclass
class InputOptions:
  """How an evaluator reads its examples (`rew_jax.data.pipeline.eval_input`)."""
  pp: str = ""               # The pp spec (rew_jax/data/ops.py); each evaluator has its own.
  batch_size: int = 32       # Examples per process in a batch (global: × processes).
  max_examples: int = 0      # 0: every example; else the first ones (see each evaluator).
  num_threads: int = 0       # Grain threads reading and preprocessing; 0: one per core.
  num_workers: int = 0       # Grain worker processes; 0: none; -1: from the core count.


class Evaluator:
  """Base class: subclasses declare `Options` and implement `run`. `name` prefixes metric
  names and file paths."""

  name: str = "eval"
  workdir: str | None = None
  # The evaluator's options and their defaults, a dataclass (None: it takes none).
  Options: ClassVar[type | None] = None
  # Options that `from_config`'s shared keyword arguments may fill (e.g. a tokenizer).
  SHARED_KWARGS: ClassVar[Sequence[str]] = ()

  def __init__(self, predict_fn: PredictFn, *, name: str | None = None,
               workdir: str | None = None, **options):
    self.predict_fn, self.workdir = predict_fn, workdir
    self.name = name or self.name
    config_lib.check_keys(options, self.default_config(), self.name)
    self.options = self.Options(**options) if self.Options else None

  @classmethod
  def default_config(cls) -> dict[str, Any]:
    """option → default, every option this evaluator takes."""
    if cls.Options is None:
      return {}
    return {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(cls.Options)}

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

  A block's keys, less `type`, `pred` and `every`, are checked against the evaluator's
  `default_config()` (a ConfigError naming `evals.NAME.KEY` and the closest valid keys).
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
    if hasattr(cls, "default_config"):
      config_lib.check_keys(kwargs, cls.default_config(), f"evals.{name}")
    accepted = getattr(cls, "SHARED_KWARGS", ())
    kwargs.update({k: v for k, v in shared.items() if k in accepted and k not in kwargs})
    out[name] = cls(predict_fns[pred], name=name, workdir=workdir, **kwargs)
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
# Prediction over the evaluation input.
# --------------------------------------------------------------------------------------------


def predict_source(predict_fn: PredictFn, params, source, options: InputOptions, *,
                   example_fn: Callable[[Any, str], dict] | None = None,
                   **kwargs) -> dict[str, np.ndarray]:
  """`predict_fn`'s outputs for every example of `source`, in source order: the examples
  read through `pipeline.eval_input` with `options` (pp, per-process batch size, threads,
  workers), predicted by `predict_all`."""
  batches, _ = pipeline.eval_input(
      source, options.pp, batch_size=options.batch_size * jax.process_count(),
      example_fn=example_fn, num_threads=options.num_threads, num_workers=options.num_workers)
  return predict_all(predict_fn, params, batches, **kwargs)


def predict_all(predict_fn: PredictFn, params, batches: Iterable[Mapping[str, np.ndarray]],
                **kwargs) -> dict[str, np.ndarray]:
  """`predict_fn`'s outputs for every example of this host's `batches` of
  `pipeline.eval_input`, in example order, as host numpy arrays.

  The batch's `_index` (each row's position in the source, -1 for padding) never reaches
  `predict_fn`; it puts the outputs back in order. One process: the batches as they are.
  Several: each batch becomes a global array over the mesh of `params` (every process yields
  the same number of batches, padding masked), and the outputs of all processes are
  gathered onto every process.
  """
  mesh = None
  if jax.process_count() > 1:
    mesh = params_mesh(params)
    if mesh is None:
      raise ValueError("predicting on several processes needs parameters placed on a mesh "
                       "(jax.Arrays with a NamedSharding, as model_setup places them)")
  rows: dict[str, list] = {}
  order = []
  iterator = iter(batches)
  try:
    for batch in iterator:
      batch = dict(batch)
      if mesh is None:
        index = np.asarray(batch.pop(pipeline.INDEX_KEY))
        outputs = predict_fn(params, batch, **kwargs)
      else:
        global_batch = sharding.host_batch_to_global(batch, mesh)
        ids = global_batch.pop(pipeline.INDEX_KEY)
        outputs = predict_fn(params, global_batch, **kwargs)
        # Gathered whole onto every process, rows in the global batch's order.
        outputs = multihost_utils.process_allgather({pipeline.INDEX_KEY: ids, **outputs},
                                                    tiled=True)
        index = np.asarray(outputs.pop(pipeline.INDEX_KEY))
      keep = index >= 0
      order.append(index[keep])
      for key, value in outputs.items():
        rows.setdefault(key, []).append(np.asarray(value)[keep])
  finally:
    if hasattr(iterator, "close"):
      iterator.close()  # Stops the prefetch threads (or workers) of an unfinished input.
  position = np.argsort(np.concatenate(order), kind="stable")
  return {k: np.concatenate(v)[position] for k, v in rows.items()}


def params_mesh(params) -> jax.sharding.Mesh | None:
  """The mesh of the first parameter placed with a NamedSharding, or None."""
  for x in jax.tree.leaves(params):
    if isinstance(getattr(x, "sharding", None), jax.sharding.NamedSharding):
      return x.sharding.mesh
  return None


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
