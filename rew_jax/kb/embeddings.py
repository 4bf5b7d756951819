"""Entity embeddings on disk: fixed-size float16/bfloat16 shards, written resumably.

Layout of an embeddings directory (next to the KB index by default):
  meta.json          count, dim, dtype, shard_rows, text mode, encoder dir, KB stamp
  emb-00000.npy ...  [shard_rows, D] (the last one shorter); bfloat16 is stored as its
                     uint16 bit pattern because .npy has no bfloat16 type

A shard is written to a temporary name and renamed when complete, so an interrupted run
resumes at the first missing shard. In a multi-process job the shards are split over the
processes (process p encodes shards p, p + P, ...), and process 0 alone writes the two
metadata files, so the matrix is built once in all, into the one shared directory. 6M × 384 float16 is 4.7 GB: the retrieval step reads
the shards as memory maps, chunk by chunk, and never holds the whole matrix in one array.
"""

from __future__ import annotations

import json
import os
from typing import Iterator

import ml_dtypes
import numpy as np

from rew_jax import distributed
from rew_jax.errors import UserError

DTYPES = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
TEXT_MODES = ("title", "title_summary")


def entity_text(title: str, summary: str, mode: str, summary_chars: int = 300) -> str:
  """What is embedded for an entity: its title, or its title followed by a summary prefix."""
  if mode == "title":
    return title
  if mode == "title_summary":
    return f"{title}. {summary[:summary_chars]}" if summary else title
  raise UserError(f"unknown embedding text mode {mode!r}; choose one of {TEXT_MODES}")


def _shard_path(out_dir: str, i: int) -> str:
  return os.path.join(out_dir, f"emb-{i:05d}.npy")


class EmbeddingStore:
  """Opened shards: `num` rows of width `dim`, readable in chunks as float16/bfloat16."""

  def __init__(self, out_dir: str):
    path = os.path.join(out_dir, "meta.json")
    if not os.path.isfile(path):
      raise UserError(f"{out_dir!r} holds no entity embeddings (no meta.json)")
    with open(path) as f:
      self.meta = json.load(f)
    self.dir = out_dir
    self.num, self.dim = int(self.meta["count"]), int(self.meta["dim"])
    self.dtype = DTYPES[self.meta["dtype"]]
    self.shard_rows = int(self.meta["shard_rows"])
    self._shards = []
    for i in range(_num_shards(self.num, self.shard_rows)):
      arr = np.load(_shard_path(out_dir, i), mmap_mode="r")
      self._shards.append(arr.view(self.dtype) if arr.dtype != self.dtype else arr)

  def rows(self, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) as one array (copied only when they span shards)."""
    parts = []
    while start < stop:
      s, off = divmod(start, self.shard_rows)
      take = min(stop - start, self.shard_rows - off)
      parts.append(self._shards[s][off:off + take])
      start += take
    return parts[0] if len(parts) == 1 else np.concatenate(parts)

  def chunks(self, chunk_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    for start in range(0, self.num, chunk_rows):
      yield start, self.rows(start, min(start + chunk_rows, self.num))

  def as_array(self) -> np.ndarray:
    return self.rows(0, self.num)


def _num_shards(count: int, shard_rows: int) -> int:
  return -(-count // shard_rows)


def build_embeddings(kb, encoder, out_dir: str, *, text: str = "title",
                     summary_chars: int = 300, shard_rows: int = 65536,
                     dtype: str = "float16", progress: bool = True,
                     sync=distributed.barrier) -> EmbeddingStore:
  """Embeds every KB entity with `encoder` into `out_dir`; resumes an interrupted run.

  With several processes, each embeds its share of the shards; `sync(name)` is where they
  wait for each other (a barrier, or for a local mirror of a bucket one that also moves
  the files across: `candidates._Mirrors.sync`).

  An existing directory built with other settings (encoder, text mode, dtype, KB) is an
  error rather than a silent mix of two embedding spaces.
  """
  if dtype not in DTYPES:
    raise UserError(f"embedding dtype {dtype!r} is not one of {sorted(DTYPES)}")
  entity_text("", "", text)  # Validates the mode early.
  meta = {"count": len(kb), "dim": encoder.dim, "dtype": dtype, "shard_rows": shard_rows,
          "text": text, "summary_chars": summary_chars, "encoder": encoder.model_dir,
          "max_length": encoder.max_length, "kb": kb.meta.get("source")}
  os.makedirs(out_dir, exist_ok=True)
  meta_path = os.path.join(out_dir, "meta.json")
  planned = os.path.join(out_dir, "planned.json")
  index, count = distributed.process_index(), distributed.process_count()
  if index == 0:
    _check_or_write_plan(planned, meta, out_dir)
  sync("embeddings-planned")
  if index != 0:
    _check_or_write_plan(planned, meta, out_dir)  # Reads process 0's plan: same settings?

  n_shards = _num_shards(len(kb), shard_rows)
  todo = [i for i in range(n_shards) if i % count == index
          and not os.path.isfile(_shard_path(out_dir, i))]
  bar = None
  if progress and todo and index == 0:
    import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm.tqdm(total=len(kb), initial=len(kb) - sum(
        min(shard_rows, len(kb) - i * shard_rows) for i in todo), desc="entity embeddings",
                    unit=" entities", mininterval=2)
  store_dtype = np.uint16 if dtype == "bfloat16" else DTYPES[dtype]
  for i in todo:
    start, stop = i * shard_rows, min((i + 1) * shard_rows, len(kb))
    texts = [entity_text(kb.titles[r], kb.summaries[r] if text != "title" else "", text,
                         summary_chars) for r in range(start, stop)]
    emb = encoder.encode(texts).astype(DTYPES[dtype])
    tmp = _shard_path(out_dir, i) + ".tmp"
    with open(tmp, "wb") as f:
      np.save(f, emb.view(store_dtype))
    os.replace(tmp, _shard_path(out_dir, i))
    if bar is not None:
      bar.update(stop - start)
  if bar is not None:
    bar.close()
  sync("embeddings-written")
  if index == 0:
    with open(meta_path + ".tmp", "w") as f:
      json.dump(meta, f, indent=1)
    os.replace(meta_path + ".tmp", meta_path)
  sync("embeddings-complete")
  return EmbeddingStore(out_dir)


def _check_or_write_plan(planned: str, meta: dict, out_dir: str) -> None:
  """Records the settings of a new directory; refuses one built with other settings."""
  if os.path.isfile(planned):
    with open(planned) as f:
      previous = json.load(f)
    if previous != json.loads(json.dumps(meta)):
      diff = sorted(k for k in meta if previous.get(k) != json.loads(json.dumps(meta))[k])
      raise UserError(f"{out_dir} holds embeddings built with other settings ({', '.join(diff)} "
                      "differ); remove the directory or point embeddings elsewhere")
  else:
    with open(planned + ".tmp", "w") as f:
      json.dump(meta, f, indent=1)
    os.replace(planned + ".tmp", planned)
