"""Grain input pipelines over REW records, and global batch assembly.

Train (endless unless `num_epochs` is set; each host reads 1/process_count of every epoch):

    MapDataset.source(records) → shuffle(seed) → repeat(num_epochs)
      → random_map(decode record, task mixture, pp ops) → HostBlocks(process)
      → to_iter_dataset(threads) → batch(local batch, drop remainder) → mp_prefetch(workers)

  The shuffle is a global permutation with the same seed on every host, re-drawn each epoch.
  Random ops draw from Grain's per-element generator keyed by the element's *global*
  position, and host p then takes rows [p·local, (p+1)·local) of every global batch: the
  global batch (its examples, their augmentations and their row order) is the same for any
  number of hosts, so a 2-host run computes the losses of a 1-host run. The stream is a pure
  function of (seed, position): the iterator's `get_state()`/`set_state()` restore the exact
  next batch, with or without workers.
  Records supporting no configured task (e.g. abstained, in an entity-only recipe) are
  filtered by design; the batch is filled from the following records.

Eval (deterministic; keeps every example): host p reads records p, p+P, p+2P, ...; every host
yields the same number of batches, the last ones padded with placeholder examples whose
`mask` is 0. String fields (image_id, entity_id, split) stay in the batch as numpy arrays.

Bad records (undecodable bytes, mistyped fields, corrupt images, entities without codes)
raise a `UserError` naming shard and record, or with `on_error="skip"` become masked
placeholders with `skipped=1`: the batch keeps its shape, the loss ignores them (`mask`), and
`SkipReport` sums `skipped` over an epoch and reports it. Nothing is dropped silently.

Every batch holds: `image` float32 [B, H, W, 3], the pp outputs (e.g. `prompt`, `target`
int32 [B, L], and from the `pad` op `target_truncated` int32 [B]: 1 where the target was cut
at its task's length), `task_id` int32 [B], `mask` int32 [B] (1 = real example), `skipped`
int32 [B]. Records keep their full texts; truncation happens here, per task
(`tasks.target_len`), and is counted: the train loop logs `truncated` and
`truncated/<task>` in metrics.jsonl, `SkipReport` sums it over an epoch.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Mapping, Sequence

import grain
import numpy as np

from rew_jax.config import ConfigDict
from rew_jax.data import ops as ops_lib
from rew_jax.data import tasks as tasks_lib
from rew_jax.data import tokenizers
from rew_jax.errors import ConfigError
from rew_jax.records import RecordError, RecordSource, decode

DEFAULT_TRAIN_PP = (
    "decode_inception_crop(224, antialias=False)|normalize('clip')|"
    "tokenize(key='prompt', bos=True)|pad(20, key='prompt')|"
    f"tokenize(key='target', eos=True)|pad(32, key='target', keep_eos={tokenizers.BERT_EOS_ID})")
DEFAULT_EVAL_PP = (
    "decode|resize_crop(224)|normalize('clip')|"
    "tokenize(key='prompt', bos=True)|pad(20, key='prompt')|"
    f"tokenize(key='target', eos=True)|pad(32, key='target', keep_eos={tokenizers.BERT_EOS_ID})")
STRING_FIELDS = ("image_id", "entity_id", "split", "task")


def default_config() -> ConfigDict:
  """The `config.input` block of a training config."""
  return ConfigDict(dict(
      data_dir="",             # A REW records directory (manifest.json + shards).
      batch_size=64,           # Global batch; each host gets batch_size / process_count.
      seed=0,
      pp=DEFAULT_TRAIN_PP,
      tasks=tasks_lib.default_config(),
      on_error="raise",        # "raise" | "skip" (masked, counted, reported).
      num_epochs=0,            # 0: repeat forever.
      num_threads=0,           # Threads reading/preprocessing per process; 0: auto.
      num_workers=-1,          # Grain worker processes (mp_prefetch); 0: none; -1: auto.
      worker_buffer_size=2,    # Batches buffered per worker.
      verify=True,             # Check shard sizes and counts against the manifest at start.
  ))


# --------------------------------------------------------------------------------------------
# Sources (top-level classes: Grain workers receive them by pickle).
# --------------------------------------------------------------------------------------------


class _Located:
  """Record i → ("shard S record j", bytes), so that errors can name where they come from."""

  def __init__(self, source: RecordSource):
    self.source = source

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int):
    return self.source.where(index), self.source[index]


class PaddedHostSource:
  """Host p's share of `source` for evaluation: items p, p+P, ..., then padding to `length`.

  Yields (where, item); padding is (None, None), not None, because Grain treats a None
  element as filtered out. `where` comes from `source.where(i)` when the source has it.
  """

  def __init__(self, source, process_index: int, process_count: int, length: int):
    self.source, self.p, self.n_proc, self.length = source, process_index, process_count, length

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, k: int):
    i = self.p + k * self.n_proc
    if i >= len(self.source):
      return None, None
    where = self.source.where(i) if hasattr(self.source, "where") else f"example {i}"
    return where, self.source[i]


class RecordToExample(grain.transforms.RandomMap):
  """Record bytes → one preprocessed example dict (None: no task for this record)."""

  def __init__(self, mixture: tasks_lib.TaskMixture, pp: str, *, on_error: str = "raise",
               eval_mode: bool = False):
    if on_error not in ("raise", "skip"):
      raise ConfigError(f"input.on_error must be 'raise' or 'skip', not {on_error!r}")
    self.mixture = mixture
    self.pp = ops_lib.get_preprocess(pp)
    self.on_error = on_error
    self.eval_mode = eval_mode

  def random_map(self, item, rng: np.random.Generator):
    if item[1] is None:  # Eval padding.
      example = self.mixture.placeholder()
      example["_placeholder"] = 1
    else:
      where, data = item
      try:
        record = decode(data, where=where)
        if self.eval_mode:
          example = self.mixture.eval_example(record, rng)
        else:
          example = self.mixture(record, rng)
          if example is None:
            return None
      except (RecordError, tasks_lib.TaskError) as e:
        if self.on_error != "skip":
          raise type(e)(f"{where}: {e}" if not str(e).startswith(where) else str(e)) from None
        logging.warning("skipped record: %s", e)
        example = self.mixture.placeholder()
        example["_skipped"] = 1
      example["_where"] = where
    example["_on_error"] = self.on_error
    example = self.pp(example, rng)
    return self._finalize(example)

  def _finalize(self, example: dict[str, Any]) -> dict[str, Any]:
    skipped = int(bool(example.get("_skipped")))
    masked = skipped or bool(example.get("_placeholder"))
    out = {"mask": np.int32(not masked), "skipped": np.int32(skipped)}
    for key, value in example.items():
      if key.startswith("_"):
        continue
      if isinstance(value, (str, bytes)):
        if self.eval_mode and key in STRING_FIELDS:
          out[key] = np.str_(value)
        continue
      out[key] = np.asarray(value)
    if "image" in example and isinstance(example["image"], bytes):
      raise ConfigError(f"pp spec {self.pp.spec!r} never decodes 'image': add 'decode'")
    return out


# --------------------------------------------------------------------------------------------
# Pipelines.
# --------------------------------------------------------------------------------------------


class HostBlocks(grain.MapDataset):
  """Host p's rows of every global batch of `local × count` consecutive elements: its
  element k is parent element (k // local)·local·count + p·local + k % local. A trailing
  partial global batch is left out, as batching with drop_remainder would."""

  _MUTATES_ELEMENT_SPEC = False

  def __init__(self, parent: grain.MapDataset, index: int, count: int, local: int):
    super().__init__(parent)
    self._index, self._count, self._local = index, count, local
    self._length = len(parent) // (local * count) * local

  def __len__(self) -> int:
    return self._length

  def _parent_index(self, k: int) -> int:
    block, row = divmod(k, self._local)
    return (block * self._count + self._index) * self._local + row

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self._parent_index(index)]

  def _getitems(self, indices: Sequence[int]):
    return self._parent._getitems(  # pylint: disable=protected-access
        [self._parent_index(k) for k in indices])

  def __str__(self) -> str:
    return f"HostBlocks(host {self._index} of {self._count}, {self._local} rows)"


def resolve_processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  return process_index, process_count


def local_batch_size(batch_size: int, process_count: int) -> int:
  if batch_size % process_count:
    raise ConfigError(f"input.batch_size {batch_size} is not divisible by the "
                      f"{process_count} processes")
  return batch_size // process_count


def _mixture(tasks: Any) -> tasks_lib.TaskMixture:
  return tasks if isinstance(tasks, tasks_lib.TaskMixture) else tasks_lib.TaskMixture(tasks)


def auto_parallelism(num_workers: int, num_threads: int,
                     cores: int | None = None) -> tuple[int, int]:
  """(worker processes, threads per process); num_workers -1 and num_threads 0 mean "from
  the core count".

  The per-image work (JPEG decode, resize, normalize) runs without the GIL, so threads of one
  process scale until the GIL-held rest (records, task mixture, tokenizing, batching: about
  0.4 ms an image) fills one core. On 2 cores, in-process threads, one per core, beat 1 or 2
  workers by 20-45 % (benchmarks/input_pipeline.py, docs/data.md): up to 4 cores, no
  workers and a thread per core; above, a worker process per 4 cores with 4 threads each.
  """
  cores = cores or os.cpu_count() or 1
  if num_workers < 0:
    num_workers = 0 if cores <= 4 else cores // 4
  if num_threads <= 0:
    num_threads = cores if num_workers == 0 else max(1, min(4, cores // num_workers))
  return num_workers, num_threads


def _maybe_prefetch(ds: grain.IterDataset, num_workers: int, buffer_size: int):
  if num_workers <= 0:
    return ds
  return ds.mp_prefetch(grain.MultiprocessingOptions(
      num_workers=num_workers, per_worker_buffer_size=buffer_size))


def train_dataset(data_dir: str, *, batch_size: int, pp: str = DEFAULT_TRAIN_PP,
                  tasks: Any = None, seed: int = 0, on_error: str = "raise",
                  num_epochs: int = 0, num_threads: int = 0, num_workers: int = -1,
                  worker_buffer_size: int = 2, verify: bool = True,
                  process_index: int | None = None, process_count: int | None = None,
                  source: RecordSource | None = None) -> grain.IterDataset:
  """The training pipeline of this host; `iter()` it for batches of `batch_size/processes`."""
  num_workers, num_threads = auto_parallelism(num_workers, num_threads)
  p, n_proc = resolve_processes(process_index, process_count)
  local = local_batch_size(batch_size, n_proc)
  source = source or RecordSource(data_dir, verify=verify)
  ds = grain.MapDataset.source(_Located(source)).shuffle(seed=seed)
  ds = ds.repeat(num_epochs or None)
  # Augmentations keyed by global position, then this host's rows of each global batch.
  ds = ds.random_map(RecordToExample(_mixture(tasks), pp, on_error=on_error), seed=seed + 1)
  ds = HostBlocks(ds, p, n_proc, local)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                            prefetch_buffer_size=max(2 * local, 16)))
  it = it.batch(local, drop_remainder=True)
  return _maybe_prefetch(it, num_workers, worker_buffer_size)


def eval_num_batches(num_records: int, batch_size: int, process_count: int) -> int:
  """Batches every host yields so that all records are seen once."""
  local = local_batch_size(batch_size, process_count)
  return max(1, math.ceil(math.ceil(num_records / process_count) / local))


def eval_dataset(data_dir: str, *, batch_size: int, pp: str = DEFAULT_EVAL_PP,
                 tasks: Any = None, seed: int = 0, on_error: str = "raise",
                 num_threads: int = 0, num_workers: int = -1, verify: bool = True,
                 process_index: int | None = None, process_count: int | None = None,
                 source: RecordSource | None = None) -> grain.IterDataset:
  """The evaluation pipeline of this host: every record once, last batch padded (mask 0)."""
  num_workers, num_threads = auto_parallelism(num_workers, num_threads)
  p, n_proc = resolve_processes(process_index, process_count)
  local = local_batch_size(batch_size, n_proc)
  source = source or RecordSource(data_dir, verify=verify)
  length = eval_num_batches(len(source), batch_size, n_proc) * local
  ds = grain.MapDataset.source(PaddedHostSource(source, p, n_proc, length))
  ds = ds.random_map(RecordToExample(_mixture(tasks), pp, on_error=on_error, eval_mode=True),
                     seed=seed)
  ds = ds.batch(local, drop_remainder=False)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2))
  return _maybe_prefetch(it, num_workers, 1)


def from_config(config: Mapping[str, Any], *, train: bool = True, **overrides) -> grain.IterDataset:
  """`train_dataset`/`eval_dataset` from a `config.input` block (see default_config)."""
  cfg = dict(default_config())
  unknown = set(config) - set(cfg) - {"eval_pp"}
  if unknown:
    raise ConfigError(f"unknown input config keys {sorted(unknown)}; known: {sorted(cfg)}")
  cfg.update(dict(config))
  if not cfg["data_dir"]:
    raise ConfigError("input.data_dir is empty: name a REW records directory")
  common = dict(batch_size=cfg["batch_size"], tasks=cfg["tasks"], seed=cfg["seed"],
                on_error=cfg["on_error"], num_threads=cfg["num_threads"],
                num_workers=cfg["num_workers"], verify=cfg["verify"])
  common.update(overrides)
  if train:
    return train_dataset(cfg["data_dir"], pp=cfg["pp"], num_epochs=cfg["num_epochs"],
                         worker_buffer_size=cfg["worker_buffer_size"], **common)
  return eval_dataset(cfg["data_dir"], pp=cfg.get("eval_pp", DEFAULT_EVAL_PP), **common)


# --------------------------------------------------------------------------------------------
# Reporting skips.
# --------------------------------------------------------------------------------------------


class SkipReport:
  """Sums `skipped`/`mask` over the batches of an epoch; says what was skipped at the end."""

  def __init__(self):
    self.examples = 0
    self.skipped = 0
    self.padding = 0
    self.truncated = 0

  def update(self, batch: Mapping[str, Any]) -> None:
    mask = np.asarray(batch["mask"])
    skipped = np.asarray(batch["skipped"])
    self.examples += int(mask.sum())
    self.skipped += int(skipped.sum())
    self.padding += int(mask.size - mask.sum() - skipped.sum())
    if "target_truncated" in batch:
      self.truncated += int((np.asarray(batch["target_truncated"]) * mask).sum())

  def summary(self) -> str:
    text = f"{self.examples} examples"
    if self.skipped:
      text += f", {self.skipped} bad records skipped (masked; see the warnings for which)"
    if self.truncated:
      text += f", {self.truncated} targets cut at their task's length (tasks.target_len)"
    return text


# --------------------------------------------------------------------------------------------
# Global arrays.
# --------------------------------------------------------------------------------------------


def make_global_batch(batch: Mapping[str, Any], mesh,
                      batch_axes: Sequence[str] = ("data", "fsdp")) -> dict[str, Any]:
  """Per-host numpy batch → global jax.Arrays sharded along the batch axes.

  The one implementation lives in `rew_jax.sharding.host_batch_to_global`; imported here
  lazily so that Grain worker processes never import jax/flax.
  """
  from rew_jax import sharding  # pylint: disable=g-import-not-at-top
  return sharding.host_batch_to_global(batch, mesh, batch_axes)
