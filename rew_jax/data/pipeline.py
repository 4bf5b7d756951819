"""Grain input pipelines: training over REW records, evaluation over any random-access source.

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

Eval (`eval_input`: deterministic, keeps every example; any random-access source: REW
records, OVEN questions, a TFDS data source, a list of examples):

    MapDataset.source(PaddedHostSource(source, process)) → map(EvalExample: example_fn, pp)
      → to_iter_dataset(threads) → batch(local batch) → thread prefetch (or mp_prefetch)

  Host p reads examples p, p+P, p+2P, ...; every host yields the same number of fixed-shape
  batches (`eval_num_batches`), the last ones padded with repeats of a real example whose
  `mask` is 0; `_index` int32 [B] holds each row's position in the source (-1: padding), so
  that outputs gathered from all hosts go back into example order. Reading, decoding and the
  pp ops run in Grain's threads ahead of the consumer, so they overlap the prediction.
  `eval_dataset` is REW records through it, string fields (image_id, entity_id, split) kept
  in the batch as numpy arrays.

Bad records (undecodable bytes, mistyped fields, corrupt images, entities without codes)
raise a `UserError` naming shard and record, or with `on_error="skip"` become masked
placeholders with `skipped=1`: the batch keeps its shape, the loss ignores them (`mask`), and
`SkipReport` sums `skipped` over an epoch and reports it. Nothing is dropped silently.

Every batch holds: `image` float32 [B, H, W, 3], the pp outputs (e.g. `prompt`, `target`
int32 [B, L], and from the `pad` op `target_truncated` int32 [B]: 1 where the target was cut
at its task's length), `task_id` int32 [B], `mask` int32 [B] (1 = real example), `skipped`
int32 [B]. Records keep their full texts; truncation happens here, per task
(`tasks.TASK.target_len`), and is counted: the train loop logs `truncated` and
`truncated/<task>` in metrics.jsonl, `SkipReport` sums it over an epoch.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Callable, Mapping, Sequence

import grain
import numpy as np

from rew_jax import config as config_lib
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
INDEX_KEY = "_index"  # Eval batches: each row's position in the source, -1 for padding.


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

  Element k is (index, where, item): `index` the item's position in `source`, -1 for padding.
  Padding repeats a real item (the host's first; item 0 on a host that has none), so that
  any pp spec gives it the shape of the others. `where` comes from `source.where(i)` when
  the source has it, else "example i".
  """

  def __init__(self, source, process_index: int, process_count: int, length: int):
    if not len(source):
      raise ValueError("an evaluation source needs at least one example")
    self.source, self.p, self.n_proc, self.length = source, process_index, process_count, length

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, k: int):
    i = self.p + k * self.n_proc
    index = i if i < len(self.source) else -1
    if index < 0:
      i = self.p if self.p < len(self.source) else 0
    where = self.source.where(i) if hasattr(self.source, "where") else f"example {i}"
    return index, where, self.source[i]


def record_example(mixture: tasks_lib.TaskMixture, data: bytes, where: str,
                   rng: np.random.Generator, *, on_error: str = "raise",
                   eval_mode: bool = False) -> dict[str, Any] | None:
  """Record bytes → the example the pp ops start from: the task mixture's draw (None: no
  task for this record) or, with `eval_mode`, its evaluation example. A bad record raises,
  naming `where`, or with on_error="skip" becomes a placeholder marked `_skipped`."""
  try:
    record = decode(data, where=where)
    example = mixture.eval_example(record, rng) if eval_mode else mixture(record, rng)
    if example is None:
      return None
  except (RecordError, tasks_lib.TaskError) as e:
    if on_error != "skip":
      raise type(e)(f"{where}: {e}" if not str(e).startswith(where) else str(e)) from None
    logging.warning("skipped record: %s", e)
    example = mixture.placeholder()
    example["_skipped"] = 1
  example["_where"] = where
  return example


class RecordToExample(grain.transforms.RandomMap):
  """Record bytes → one preprocessed training example dict (None: no task for this record)."""

  def __init__(self, mixture: tasks_lib.TaskMixture, pp: str, *, on_error: str = "raise"):
    self.mixture = mixture
    self.pp = ops_lib.get_preprocess(pp)
    self.on_error = _check_on_error(on_error)

  def random_map(self, item, rng: np.random.Generator):
    where, data = item
    example = record_example(self.mixture, data, where, rng, on_error=self.on_error)
    if example is None:
      return None
    example["_on_error"] = self.on_error
    example = self.pp(example, rng)
    skipped = int(bool(example.get("_skipped")))
    out = {"mask": np.int32(not skipped), "skipped": np.int32(skipped)}
    out.update((k, np.asarray(v)) for k, v in example.items()
               if not k.startswith("_") and not isinstance(v, (str, bytes)))
    _check_decoded(example, self.pp)
    return out


def _check_on_error(on_error: str) -> str:
  if on_error not in ("raise", "skip"):
    raise ConfigError(f"input.on_error must be 'raise' or 'skip', not {on_error!r}")
  return on_error


def _check_decoded(example: Mapping[str, Any], pp: ops_lib.Preprocess) -> None:
  if isinstance(example.get("image"), bytes):
    raise ConfigError(f"pp spec {pp.spec!r} never decodes 'image': add 'decode'")


class RecordEvalExample:
  """`eval_input`'s example_fn for REW records: (record bytes, where) → the record's
  evaluation example (`TaskMixture.eval_example`, the entity task whatever the record's
  status); a generic question, for a record without one, is drawn from `seed`."""

  def __init__(self, mixture: tasks_lib.TaskMixture, *, on_error: str = "raise", seed: int = 0):
    self.mixture, self.on_error, self.seed = mixture, _check_on_error(on_error), seed

  def __call__(self, data: bytes, where: str) -> dict[str, Any]:
    return record_example(self.mixture, data, where, np.random.default_rng(self.seed),
                          on_error=self.on_error, eval_mode=True)


class EvalExample(grain.transforms.Map):
  """(index, where, item) of `PaddedHostSource` → one preprocessed example.

  `example_fn(item, where)` makes the dict the pp ops start from (default: the item, a dict,
  copied). The batch keeps the pp outputs that are numbers or numeric arrays, the
  `keep_strings` fields as numpy strings, `mask` (int32; 0 for padding and skipped examples)
  and `_index` (int32; the position in the source, -1 for padding).
  """

  def __init__(self, pp: str, example_fn: Callable[[Any, str], dict] | None = None, *,
               on_error: str = "raise", keep_strings: Sequence[str] = ()):
    self.pp = ops_lib.get_preprocess(pp)
    self.example_fn, self.on_error = example_fn, _check_on_error(on_error)
    self.keep_strings = frozenset(keep_strings)

  def map(self, element):
    index, where, item = element
    example = self.example_fn(item, where) if self.example_fn else dict(item)
    example.setdefault("_where", where)
    example.setdefault("_on_error", self.on_error)
    # No generator: each example gets the pp's fixed one, whatever its host or position.
    example = self.pp(example)
    _check_decoded(example, self.pp)
    masked = index < 0 or example.get("_skipped") or example.get("_placeholder")
    out = {}
    for key, value in example.items():
      if key.startswith("_"):
        continue
      if isinstance(value, (str, bytes, np.str_, np.bytes_)):
        if key in self.keep_strings:
          out[key] = np.str_(value)
        continue
      value = np.asarray(value)
      if value.dtype.kind in "biuf":
        out[key] = value
    out["mask"] = np.int32(not masked)
    out[INDEX_KEY] = np.int32(index)
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


def eval_num_batches(num_examples: int, batch_size: int, process_count: int) -> int:
  """Batches every host yields so that all examples are seen once (`batch_size` global)."""
  local = local_batch_size(batch_size, process_count)
  return max(1, math.ceil(math.ceil(num_examples / process_count) / local))


def eval_input(source, pp: str, *, batch_size: int,
               example_fn: Callable[[Any, str], dict] | None = None,
               keep_strings: Sequence[str] = (), on_error: str = "raise",
               num_threads: int = 0, num_workers: int = 0,
               process_index: int | None = None,
               process_count: int | None = None) -> tuple[grain.IterDataset, int]:
  """This host's evaluation batches of `source` and how many there are (the same on every
  host): every example once, host p reading examples p, p+P, ..., fixed-shape batches of
  `batch_size / process_count`, padding rows with `mask` 0 and `_index` -1 (see the module
  docstring and `EvalExample`).

  `source` is any random-access source (`len`, `[i]`, optionally `where(i)`); `example_fn`
  (picklable, for workers) turns an item into the pp's input dict. num_threads 0: a thread
  per core; num_workers > 0: Grain worker processes (-1: from the core count, as in
  training), which receive the source and example_fn by pickle.
  """
  num_workers, num_threads = auto_parallelism(num_workers, num_threads)
  p, n_proc = resolve_processes(process_index, process_count)
  local = local_batch_size(batch_size, n_proc)
  num_batches = eval_num_batches(len(source), batch_size, n_proc)
  ds = grain.MapDataset.source(PaddedHostSource(source, p, n_proc, num_batches * local))
  ds = ds.map(EvalExample(pp, example_fn, on_error=on_error, keep_strings=keep_strings))
  # Two batches of examples read ahead by the threads, two batches assembled ahead: the
  # consumer's prediction overlaps the next batches' decoding.
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                            prefetch_buffer_size=2 * local))
  it = it.batch(local, drop_remainder=False)
  if num_workers > 0:
    return _maybe_prefetch(it, num_workers, 2), num_batches
  return grain.experimental.ThreadPrefetchIterDataset(it, prefetch_buffer_size=2), num_batches


def eval_dataset(data_dir: str, *, batch_size: int, pp: str = DEFAULT_EVAL_PP,
                 tasks: Any = None, seed: int = 0, on_error: str = "raise",
                 num_threads: int = 0, num_workers: int = -1, verify: bool = True,
                 process_index: int | None = None, process_count: int | None = None,
                 source: RecordSource | None = None) -> grain.IterDataset:
  """REW records through `eval_input`: every record once as its evaluation example (the
  entity task, whatever its curation status), image_id, entity_id and split kept."""
  source = source or RecordSource(data_dir, verify=verify)
  ds, _ = eval_input(source, pp, batch_size=batch_size,
                     example_fn=RecordEvalExample(_mixture(tasks), on_error=on_error, seed=seed),
                     keep_strings=STRING_FIELDS, on_error=on_error, num_threads=num_threads,
                     num_workers=num_workers, process_index=process_index,
                     process_count=process_count)
  return ds


def from_config(config: Mapping[str, Any], **overrides) -> grain.IterDataset:
  """The training dataset (`train_dataset`) of a `config.input` block, merged over
  `default_config()`; `overrides` replace train_dataset's arguments."""
  cfg = config_lib.merge(default_config(), config, "input")
  if not cfg.data_dir:
    raise ConfigError("input.data_dir is empty: name a REW records directory")
  kwargs = dict(batch_size=cfg.batch_size, pp=cfg.pp, tasks=cfg.tasks, seed=cfg.seed,
                on_error=cfg.on_error, num_epochs=cfg.num_epochs, num_threads=cfg.num_threads,
                num_workers=cfg.num_workers, worker_buffer_size=cfg.worker_buffer_size,
                verify=cfg.verify)
  kwargs.update(overrides)
  return train_dataset(cfg.data_dir, **kwargs)


def task_names() -> tuple[str, ...]:
  """The tasks in task-id order (`task_id` k is names[k]): every registered task."""
  return tasks_lib.names()


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
      text += f", {self.truncated} targets cut at their task's length (tasks.TASK.target_len)"
    return text
