"""Exact (or approximate) top-k inner-product search, entity axis sharded over a mesh.

Tensor dimensions:
  Q  queries            N  entities in the KB       D  embedding width
  C  entity rows per chunk (a multiple of the device count n); C/n rows per device
  G  query blocks, each of S queries (Q padded to G·S)    k  results per query

The entity matrix is streamed in chunks of C rows (6M × 384 never sits in one array). Each
chunk is placed with its rows split over all devices of the mesh; inside `shard_map` every
device scores all queries against its C/n rows and keeps its own top-k; the n·k survivors
are merged with the running top-k of earlier chunks by one more `top_k`. `lax.top_k` puts
the lower index first among equal scores, and candidates are concatenated in row order, so
ties resolve to the lower row exactly as a stable numpy argsort does: exact mode returns the
same ids as brute force. Approximate mode swaps the per-device `top_k` for
`lax.approx_max_k` (fast on TPU; measured recall in tests and the benchmark).

On a CPU the same search runs on faiss when it is installed (`backend="auto"`, the default;
`"jax"` or `"faiss"` choose explicitly): XLA:CPU's `top_k` over a [S, C] score block costs
more than the matrix product itself, where faiss's brute-force `knn` keeps a heap per query
inside its blocked GEMM (benchmarks/retrieval.py measures both against `IndexFlatIP`). The
chunks and the running merge are the same; only the per-chunk search differs, and among
exactly equal scores faiss's order is its own (the JAX path's is the lower row).
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

MODES = ("exact", "approx")
BACKENDS = ("auto", "jax", "faiss")


def choose_backend(backend: str, mesh: jax.sharding.Mesh) -> str:
  """"auto" → faiss on CPU devices when it is installed, else jax; others as given."""
  if backend not in BACKENDS:
    raise ValueError(f"retrieval backend {backend!r} is not one of {BACKENDS}")
  if backend != "auto":
    return backend
  if any(d.platform != "cpu" for d in mesh.devices.flat):
    return "jax"
  return "faiss" if importlib.util.find_spec("faiss") is not None else "jax"


def merge_topk(scores_a, rows_a, scores_b, rows_b, k: int):
  """The best k of two (scores, rows) lists per query, `a` first among equal scores."""
  scores = np.concatenate([scores_a, scores_b], axis=1)
  rows = np.concatenate([rows_a, rows_b], axis=1)
  order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(scores, order, axis=1), np.take_along_axis(rows, order, axis=1)


def brute_force_topk(queries: np.ndarray, matrix: np.ndarray, k: int):
  """numpy reference: (scores float32 [Q, k], rows int64 [Q, k]), ties to the lower row."""
  scores = np.asarray(queries, np.float32) @ np.asarray(matrix, np.float32).T
  rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(scores, rows, axis=1), rows


def entity_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh over all (or the given) devices, axis "entities"."""
  devices = jax.devices() if devices is None else devices
  return jax.sharding.Mesh(np.asarray(devices), ("entities",))


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


@functools.lru_cache(maxsize=32)
def _step_fn(mesh, k: int, mode: str, recall_target: float, precision):
  """The jitted chunk step: (queries, chunk, base, total, running) → running top-k."""
  axes = tuple(mesh.axis_names)

  def local(queries, chunk, base, total):
    # queries: [G, S, D]; chunk: [C/n, D] (this device's rows).
    rows_here = chunk.shape[0]
    dev = jax.lax.axis_index(axes)
    row_ids = base + dev * rows_here + jnp.arange(rows_here, dtype=jnp.int32)
    entities = chunk.astype(jnp.float32)

    # A device can offer at most its own rows; the running top-k keeps k slots anyway.
    k_local = min(k, rows_here)

    def block(q):  # [S, D] → [S, k_local]
      s = jnp.dot(q, entities.T, precision=precision)  # [S, C/n]
      s = jnp.where(row_ids[None, :] < total, s, -jnp.inf)
      if mode == "approx":
        vals, idx = jax.lax.approx_max_k(s, k_local, recall_target=recall_target)
      else:
        vals, idx = jax.lax.top_k(s, k_local)
      return vals, row_ids[idx]

    return jax.lax.map(block, queries)  # ([G, S, k], [G, S, k])

  sharded = jax.shard_map(
      local, mesh=mesh, in_specs=(P(), P(axes), P(), P()),
      out_specs=(P(None, None, axes), P(None, None, axes)), check_vma=False)

  def step(queries, chunk, base, total, run_scores, run_rows):
    scores, rows = sharded(queries, chunk, base, total)  # [G, S, n·k_local], device order.
    # Earlier chunks first, then devices in order: ties keep the lower row.
    all_scores = jnp.concatenate([run_scores, scores], axis=-1)
    all_rows = jnp.concatenate([run_rows, rows], axis=-1)
    best, pos = jax.lax.top_k(all_scores, k)
    return best, jnp.take_along_axis(all_rows, pos, axis=-1)

  replicated = NamedSharding(mesh, P())
  return jax.jit(step, in_shardings=(replicated, NamedSharding(mesh, P(axes)), replicated,
                                     replicated, replicated, replicated),
                 out_shardings=(replicated, replicated), donate_argnums=(4, 5))


class TopKSearcher:
  """Top-k over an entity matrix given as an array or an `EmbeddingStore`.

  Chunks are transferred to the devices once and kept there when the whole matrix fits in
  `resident_bytes` (the candidates step searches the same KB for every shard of captions);
  otherwise they are streamed from the memory-mapped shards on each search.
  """

  def __init__(self, entities, *, mesh: jax.sharding.Mesh | None = None,
               chunk_rows: int = 65536, query_block: int = 1024, mode: str = "exact",
               recall_target: float = 0.95, resident_bytes: int = 2 << 30,
               precision: str = "highest", backend: str = "auto"):
    if mode not in MODES:
      raise ValueError(f"retrieval mode {mode!r} is not one of {MODES}")
    self.mesh = mesh or entity_mesh()
    self.backend = choose_backend(backend, self.mesh)
    self.mode, self.recall_target = mode, recall_target
    self.precision = jax.lax.Precision[precision.upper()] if precision else None
    self.query_block = query_block
    self._source = entities
    if hasattr(entities, "chunks"):
      self.num, self.dim = entities.num, entities.dim
      itemsize = entities.dtype.itemsize
    else:
      self.num, self.dim = entities.shape
      itemsize = entities.dtype.itemsize
    n = self.mesh.size if self.backend == "jax" else 1
    # A small KB gets one chunk sized to it rather than a mostly padded big one.
    self.chunk_rows = _round_up(min(chunk_rows, max(self.num, 1)), n * 8)
    self._chunk_sharding = NamedSharding(self.mesh, P(tuple(self.mesh.axis_names)))
    self._resident = self._faiss_index = None
    if self.backend == "faiss":  # faiss computes in float32.
      if self.num * self.dim * 4 <= resident_bytes:
        import faiss  # pylint: disable=g-import-not-at-top
        self._faiss_index = faiss.IndexFlatIP(self.dim)  # One flat index over every row.
        for _, chunk in self._faiss_chunks():
          self._faiss_index.add(chunk)
    elif self.num * self.dim * itemsize <= resident_bytes:
      self._resident = list(self._device_chunks())

  def _host_chunks(self) -> Iterable[tuple[int, np.ndarray]]:
    if hasattr(self._source, "chunks"):
      yield from self._source.chunks(self.chunk_rows)
    else:
      for start in range(0, self.num, self.chunk_rows):
        yield start, self._source[start:start + self.chunk_rows]

  def _device_chunks(self):
    for start, chunk in self._host_chunks():
      chunk = np.asarray(chunk)
      if chunk.shape[0] < self.chunk_rows:  # Pad the tail so every chunk has one shape.
        pad = np.zeros((self.chunk_rows - chunk.shape[0], self.dim), chunk.dtype)
        chunk = np.concatenate([chunk, pad])
      yield start, jax.device_put(chunk, self._chunk_sharding)

  def _faiss_chunks(self):
    for start, chunk in self._host_chunks():
      yield start, np.ascontiguousarray(chunk, np.float32)

  def _search_faiss(self, queries: np.ndarray, k: int):
    import faiss  # pylint: disable=g-import-not-at-top
    queries = np.ascontiguousarray(queries)
    if self._faiss_index is not None:
      return self._faiss_index.search(queries, k)
    scores = np.full((len(queries), k), -np.inf, np.float32)
    rows = np.full((len(queries), k), -1, np.int64)
    for start, chunk in self._faiss_chunks():  # Streamed from the store, merged as we go.
      s, r = faiss.knn(queries, chunk, min(k, len(chunk)), metric=faiss.METRIC_INNER_PRODUCT)
      scores, rows = merge_topk(scores, rows, s, np.where(r >= 0, r + start, -1), k)
    return scores, rows

  def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores float32 [Q, k'], rows int64 [Q, k']) best first, k' = min(k, N)."""
    queries = np.asarray(queries, np.float32)
    num_q = queries.shape[0]
    k_eff = min(k, self.num)
    if num_q == 0 or k_eff == 0:
      return np.zeros((num_q, k_eff), np.float32), np.zeros((num_q, k_eff), np.int64)
    if self.backend == "faiss":
      return self._search_faiss(queries, k_eff)
    block = min(self.query_block, _round_up(num_q, 8))
    padded = _round_up(num_q, block)
    q = np.zeros((padded, self.dim), np.float32)
    q[:num_q] = queries
    q = q.reshape(padded // block, block, self.dim)
    step = _step_fn(self.mesh, k_eff, self.mode, self.recall_target, self.precision)
    run_scores = jnp.full((q.shape[0], block, k_eff), -jnp.inf, jnp.float32)
    run_rows = jnp.full((q.shape[0], block, k_eff), -1, jnp.int32)
    q = jax.device_put(q, NamedSharding(self.mesh, P()))
    total = np.int32(self.num)
    for start, chunk in (self._resident if self._resident is not None
                         else self._device_chunks()):
      run_scores, run_rows = step(q, chunk, np.int32(start), total, run_scores, run_rows)
    scores = np.asarray(run_scores).reshape(padded, k_eff)[:num_q]
    rows = np.asarray(run_rows).reshape(padded, k_eff)[:num_q].astype(np.int64)
    return scores, rows
